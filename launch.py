"""Runs an experiment from a config file.

    python launch.py --config=configs/demo.py --workdir=runs/demo
    python launch.py --config=configs/germeval.py --workdir=runs/germeval \
        --config.cls.data.train_path=../shared/data/germeval2018/germeval2018.training.txt \
        --config.compression.starting_rate=0.3

Rerunning the same command resumes from the last checkpoint; SIGTERM or Ctrl-C saves one at
the step in flight and exits with status 143 or 130 (a second signal stops at once). A
workdir that holds a run with another config is refused unless --overwrite is given, and a
workdir in use by a running run is refused. The config is checked as a whole, and the data read, before any
model is loaded: mistakes in either end the program with status 2 and one line on stderr
(THESEUS_TRACEBACK=1 or --verbosity=1 adds the traceback).

Several hosts: start the same command on each, with --coordinator_address=HOST0:PORT
--num_processes=N --process_id=i (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID; under SLURM nothing); process 0 writes the workdir's files. See
docs/multi-device.md.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from pathlib import Path

import jax
from absl import app, flags
from absl import logging as absl_logging
import ml_collections
from ml_collections import config_flags

from configs.base import get_base_config
from theseus_jax import memory
from theseus_jax.errors import UserError, one_line, run_cli, show_tracebacks
from theseus_jax.experiments import datasets, preemption
from theseus_jax.experiments.checkpoints import check_workdir, claim_workdir, unclaim_workdir
from theseus_jax.experiments.config_schema import CONFIG, SCHEMA, used_parts, validate_config, validate_devices
from theseus_jax.experiments.pipelines import PIPELINES
from theseus_jax.experiments.workdir_lock import WorkdirBusy, WorkdirLock
from theseus_jax.training import parallel

PROG = "launch.py"
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (a Python file with get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a workdir that holds a run with another config.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: process 0's HOST:PORT (default JAX_COORDINATOR_ADDRESS; SLURM is detected)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (default JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index (default JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])

log = logging.getLogger("theseus_jax")


def _usage_error(message: str) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with its errors (a bad flag value, a config field that does not
    exist, a config file that is missing or cannot be loaded) as one line and exit status 2."""
    path = _config_argument(argv)
    if path is not None and not Path(path.split(":", 1)[0]).is_file() and not show_tracebacks():
        _usage_error(f"--config={path}: no such config file; give a Python file with get_config(), e.g. --config=configs/demo.py")
    try:
        parsed = flags.FLAGS(argv)
    except flags.Error as err:
        if show_tracebacks():
            raise
        _usage_error(_config_file_error(str(err)))
    except OSError as err:  # config_flags: an override of a config whose file raised an OSError
        if show_tracebacks():
            raise
        _usage_error(f"--config={path}: cannot be loaded: {err}")
    except (AttributeError, KeyError) as err:  # ml_collections: an override of a field the config lacks
        if show_tracebacks():
            raise
        _usage_error(_unknown_field(err, argv))
    config = flags.FLAGS["config"].value
    if not isinstance(config, ml_collections.ConfigDict) and not show_tracebacks():
        try:  # config_flags keeps a loading OSError until the config is first read, deep in the run
            config.to_dict()
        except OSError as err:
            _usage_error(f"--config={path}: cannot be loaded: {err}")
    return parsed


def _config_argument(argv: list[str]) -> str | None:
    """The --config value as given (None without one: absl then names the missing flag)."""
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_field(err: Exception, argv: list[str]) -> str:
    """`--config.FIELD: no such field` with the closest known field."""
    missing = re.search(r"[A-Za-z_]\w*", str(err)).group()
    overrides = [a.split("=")[0][len("--config."):] for a in argv[1:] if a.startswith("--config.")]
    field = next((o for o in overrides if missing in o.split(".")), missing)
    close = difflib.get_close_matches(field, [k for k, f in SCHEMA.items() if f.types != CONFIG], n=1)
    hint = f"did you mean --config.{close[0]}?" if close else "check the spelling against configs/base.py"
    return f"--config.{field}: the config has no such field; {hint}"


def _config_file_error(message: str) -> str:
    """An exception raised inside a config file, as `file:line: exception (code)`."""
    if "Traceback (most recent call last)" not in message:
        return message
    frames = [f for f in re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)', message) if "site-packages" not in f[0]]
    exception = message.strip().splitlines()[-1]
    if not frames:
        return exception
    file, line, code = frames[-1]
    return f"{file}:{line}: {exception} (in `{code.strip()}`)"


def _setup_logging() -> None:
    # Our progress at INFO; libraries (orbax logs every checkpoint step) at WARNING,
    # unless --verbosity asks for more.
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    logger = logging.getLogger("theseus_jax")
    for old in [h for h in logger.handlers if getattr(h, "launch_handler", False)]:
        logger.removeHandler(old)  # main() called again in one process (tests)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.launch_handler = True
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


COMPILATION_CACHE = Path("~/.cache/theseus-jax/xla")


def _cache_compilations() -> None:
    """Resumes, seeds, learning rates and grid points compile the same steps again: keep
    XLA's executables on disk (JAX_COMPILATION_CACHE_DIR picks another folder; a 4 GiB
    least-recently-used bound unless JAX_COMPILATION_CACHE_MAX_SIZE says otherwise, 0 = off)."""
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(COMPILATION_CACHE.expanduser()))
    if jax.config.jax_compilation_cache_max_size == -1:
        jax.config.update("jax_compilation_cache_max_size", 4 << 30)


# Fields that change how a run is carried out, not its result: a rerun with another value resumes.
RUN_SETTINGS = ("max_memory_gb",)


def _identity(config) -> dict:
    """The config as a workdir records it (`claim_workdir`), without RUN_SETTINGS."""
    return {k: v for k, v in config.to_dict().items() if k not in RUN_SETTINGS}


def run(config, workdir: Path, overwrite: bool = False) -> dict:
    """Checks config and data, takes the workdir and runs the pipeline (every process of
    a multi-host run calls it; process 0 holds the lock and writes the files)."""
    validate_config(config)
    parallel.init_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    validate_devices(config, jax.device_count())
    cap = config.get("max_memory_gb", 0.0)
    if cap and jax.process_count() > 1:  # one host stopping alone would leave the others waiting
        log.warning("max_memory_gb is ignored with several processes")
    else:
        memory.set_cap(cap)
    writer = parallel.is_writer()
    existed = workdir.exists()
    lock = WorkdirLock(workdir)
    resumed = True
    try:
        error: UserError | None = None
        try:
            if writer:
                check_workdir(workdir)
            if writer and existed:
                lock.acquire()  # a busy workdir fails before the data is read
            datasets.check_data(config, used_parts(config))
            if writer:
                workdir.mkdir(parents=True, exist_ok=True)
                lock.acquire()
                resumed = claim_workdir(workdir, _identity(config), overwrite, _identity(get_base_config()))
        except UserError as err:
            error = err
        if not parallel.agree(error is None):  # every process stops when process 0 must
            raise error or WorkdirBusy(f"{workdir}: process 0 could not take the workdir (see its error)")
        if writer:
            log.info("%s run in %s", "resuming the" if resumed else "starting a new", workdir)
        try:
            with preemption.stop_on_signals():
                return PIPELINES[config.pipeline](config, workdir)
        except UserError:
            if writer and not resumed:
                lock.release()
                unclaim_workdir(workdir, created=not existed)
            raise
    finally:
        lock.release()


def main(argv: list[str]) -> int:
    def launch() -> int | None:
        if len(argv) > 1:
            raise UserError(f"unexpected arguments {argv[1:]}; overrides take the form --config.FIELD=VALUE")
        _setup_logging()
        memory.configure_memory()  # before JAX's first computation
        _cache_compilations()
        workdir = Path(_WORKDIR.value)
        try:
            result = run(_CONFIG.value, workdir, _OVERWRITE.value)
        except preemption.Stopped as stopped:
            print(f"{PROG}: {one_line(str(stopped))}", file=sys.stderr, flush=True)
            return stopped.status
        log.info("done: %s", workdir / "report.md")
        for key, value in result.get("comparison", {}).items():
            log.info("  %s: %s", key, value)

    return run_cli(launch, PROG, traceback=flags.FLAGS.verbosity >= 1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
