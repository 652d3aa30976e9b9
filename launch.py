"""Runs an experiment from a config file.

    python launch.py --config=configs/demo.py --workdir=runs/demo
    python launch.py --config=configs/germeval.py --workdir=runs/germeval \
        --config.cls.data.train_path=../shared/data/germeval2018/germeval2018.training.txt \
        --config.compression.starting_rate=0.3

Rerunning the same command resumes from the last checkpoint; a workdir that holds a run
with another config is refused unless --overwrite is given.
"""

import logging
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from theseus_jax.experiments.checkpoints import claim_workdir
from theseus_jax.experiments.pipelines import PIPELINES

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (a Python file with get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a workdir that holds a run with another config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Our progress at INFO; libraries (orbax logs every checkpoint step) at WARNING.
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("theseus_jax")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    config = _CONFIG.value
    if config.pipeline not in PIPELINES:
        raise app.UsageError(f"config.pipeline={config.pipeline!r}; choose one of {sorted(PIPELINES)}")
    workdir = Path(_WORKDIR.value)
    resumed = claim_workdir(workdir, config.to_dict(), _OVERWRITE.value)
    logger.info("%s run in %s", "resuming the" if resumed else "starting a new", workdir)
    result = PIPELINES[config.pipeline](config, workdir)
    logger.info("done: %s", workdir / "report.md")
    for key, value in result.get("comparison", {}).items():
        logger.info("  %s: %s", key, value)


if __name__ == "__main__":
    app.run(main)
