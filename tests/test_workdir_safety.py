"""A locked workdir, atomic outputs, and runs killed mid-export or mid-checkpoint that
resume to the uninterrupted result."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from theseus_jax import atomic
from theseus_jax.experiments.checkpoints import Checkpoints, Progress, claim_workdir
from theseus_jax.experiments.workdir_lock import HOLDER_FILE, LOCK_FILE, WorkdirBusy, WorkdirLock

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "tiny_config.py"


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """Subprocess environment: this checkout first, one shared JAX compilation cache."""
    return dict(
        os.environ, PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra,
    )


# --- The lock -----------------------------------------------------------------------


def test_a_second_holder_is_refused_with_the_first_ones_host_pid_and_start(tmp_path):
    first, second = WorkdirLock(tmp_path), WorkdirLock(tmp_path)
    first.acquire()
    with pytest.raises(WorkdirBusy, match=rf"in use by another run \(PID {os.getpid()} on host \S+, started 20\d\d-"):
        second.acquire()
    first.release()
    assert not (tmp_path / LOCK_FILE).exists() and not (tmp_path / HOLDER_FILE).exists()
    second.acquire()  # free again
    second.release()


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    code = f"""
        import os, signal
        from theseus_jax.experiments.workdir_lock import WorkdirLock
        lock = WorkdirLock({str(tmp_path)!r})
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    """
    dead = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(tmp_path), timeout=120)
    assert dead.returncode == -signal.SIGKILL
    holder = json.loads((tmp_path / HOLDER_FILE).read_text())
    lock = WorkdirLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="theseus_jax"):
        lock.acquire()
    assert f"taking over the lock of PID {holder['pid']}" in caplog.text
    assert json.loads((tmp_path / HOLDER_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_overwrite_clears_the_workdir_but_not_the_lock(tmp_path):
    claim_workdir(tmp_path, {"a": 1}, overwrite=False)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "report.json").write_text("{}")
    lock = WorkdirLock(tmp_path)
    lock.acquire()
    assert claim_workdir(tmp_path, {"a": 2}, overwrite=True) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_FILE, HOLDER_FILE, "config.json"])
    lock.release()


def _launch_command(workdir: Path, data: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, str(REPO / "launch.py"), f"--config={TINY}", f"--workdir={workdir}",
        f"--config.cls.data.train_path={data}", *overrides,
    ]


def test_launch_on_a_workdir_in_use_exits_at_once_naming_the_holder(tmp_path, germeval_tsv):
    workdir = tmp_path / "run"
    workdir.mkdir()
    code = f"""
        import sys, time
        from theseus_jax.experiments.workdir_lock import WorkdirLock
        lock = WorkdirLock({str(workdir)!r})
        lock.acquire()
        print("held", flush=True)
        time.sleep(600)
    """
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = subprocess.run(_launch_command(workdir, germeval_tsv, "--config.pipeline=cls_baseline"),
                                 capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip() == (
        f"launch.py: error: {workdir} is in use by another run (PID {holder.pid} on host {os.uname().nodename}, "
        f"started {json.loads((workdir / HOLDER_FILE).read_text())['started']}); wait for it to end or choose another --workdir"
    )
    assert sorted(p.name for p in workdir.iterdir()) == [LOCK_FILE, HOLDER_FILE]  # nothing of the refused run


@pytest.mark.slow
def test_two_concurrent_launches_one_runs_the_other_is_refused(tmp_path, germeval_tsv):
    workdir = tmp_path / "run"
    command = _launch_command(workdir, germeval_tsv, "--config.pipeline=cls_baseline", "--config.cls.epochs=1")
    first = subprocess.Popen(command, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (workdir / HOLDER_FILE).exists():
        assert time.time() < deadline and first.poll() is None, "the first run never took the workdir"
        time.sleep(0.1)
    second = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    assert second.returncode == 2 and f"in use by another run (PID {first.pid} on host" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert json.loads((workdir / "report.json").read_text())["name"] == "cls_baseline"
    assert not (workdir / LOCK_FILE).exists() and not (workdir / HOLDER_FILE).exists()


# --- Atomic files and folders ---------------------------------------------------------


def test_a_checkpoint_killed_while_written_leaves_no_temporary_folder_behind(tmp_path):
    """Orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp-<ns>` and renames it when
    complete; a kill in between leaves that folder. Reopening the run deletes it (disk space)
    and resumes from the last complete checkpoint."""
    import jax.numpy as jnp

    directory = tmp_path / "checkpoints"
    first = Checkpoints(directory)
    first.save(1, {"w": jnp.arange(3.0)}, Progress(batch=1))
    first.close()
    partial = directory / "2.orbax-checkpoint-tmp-1764100000000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half-written").write_bytes(b"\0" * 64)

    reopened = Checkpoints(directory)
    state, progress = reopened.restore({"w": jnp.zeros(3)})
    assert sorted(p.name for p in directory.iterdir()) == ["1"]
    assert reopened.latest_step() == 1 and progress.batch == 1
    assert state["w"].tolist() == [0.0, 1.0, 2.0]


def test_the_checkpoints_own_wait_is_not_reported_as_a_slow_save(tmp_path, monkeypatch, caplog):
    """Each save waits for its write (memory); orbax counts that wait at the next save and warns
    "Waiting for previous save to complete", advising fewer checkpoints. The warning is dropped;
    with the filter off, the same saves raise it (orbax's threshold lowered to any wait)."""
    import jax.numpy as jnp
    import orbax.checkpoint.checkpoint_manager as manager_module

    from theseus_jax.experiments import checkpoints

    monkeypatch.setattr(manager_module, "_WAIT_FOR_PREV_SAVE_WARNING_THRESHOLD_SECS", -1.0)

    def warnings(directory):
        caplog.clear()
        saving = Checkpoints(directory)
        for step in (1, 2, 3):
            saving.save(step, {"w": jnp.arange(3.0) * step}, Progress(batch=step))
        saving.close()
        return [r for r in caplog.records if "Waiting for previous save" in r.getMessage()]

    absl_logger, own_wait = logging.getLogger("absl"), checkpoints._OWN_WAIT
    with caplog.at_level(logging.WARNING):
        assert warnings(tmp_path / "filtered") == []
        let_through = logging.Filter()  # passes every record
        absl_logger.removeFilter(own_wait)
        monkeypatch.setattr(checkpoints, "_OWN_WAIT", let_through)
        try:
            assert len(warnings(tmp_path / "unfiltered")) >= 2
        finally:
            absl_logger.removeFilter(let_through)
            absl_logger.addFilter(own_wait)


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    atomic.write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic.open_atomic(path) as f:
            f.write("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_figure_is_written_whole(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    atomic.save_figure(fig, tmp_path / "plot.png")
    plt.close(fig)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_a_folder_swap_killed_between_its_renames_recovers_the_old_folder(tmp_path):
    code = f"""
        from pathlib import Path
        from theseus_jax import atomic
        for version in ("old", "new"):
            with atomic.replace_dir({str(tmp_path / 'best')!r}) as staging:
                (staging / "weights").write_text(version)
    """
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(tmp_path, THESEUS_KILL_AT="replace_dir:2"), timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "best").exists()  # killed after moving the old folder aside
    atomic.recover_dir(tmp_path / "best")
    assert (tmp_path / "best" / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "jax_cache") == ["best"]
    with atomic.replace_dir(tmp_path / "best") as staging:
        (staging / "weights").write_text("new")
    assert (tmp_path / "best" / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "jax_cache") == ["best"]


# --- Runs killed while publishing ------------------------------------------------------

KILL_RUN = ("--config.pipeline=cls_compress", "--config.cls.epochs=2", "--config.checkpoint_every_steps=4")


def _history(workdir: Path) -> list[dict]:
    report = json.loads((workdir / "report.json").read_text())
    return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in report["history"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, germeval_tsv):
    root = tmp_path_factory.mktemp("uninterrupted")
    result = subprocess.run(_launch_command(root / "run", germeval_tsv, *KILL_RUN), env=_env(root.parent),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["replace_dir:1", "checkpoint:2"])
def test_a_run_killed_while_publishing_resumes_to_the_same_result(tmp_path, germeval_tsv, uninterrupted, kill_at):
    """replace_dir:1 kills the first export of the best model between its renames (end of
    epoch 1); checkpoint:2 kills while the step-8 checkpoint is being written."""
    workdir = tmp_path / "run"
    command = _launch_command(workdir, germeval_tsv, *KILL_RUN)
    killed = subprocess.run(command, env=_env(uninterrupted.parents[1], THESEUS_KILL_AT=kill_at), capture_output=True,
                            text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (workdir / "report.json").exists()
    resumed = subprocess.run(command, env=_env(uninterrupted.parents[1]), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "taking over the lock" in resumed.stderr and "resuming at step" in resumed.stderr
    assert _history(workdir) == _history(uninterrupted)
    steps = lambda w: [json.loads(line) for line in (w / "steps.jsonl").read_text().splitlines()]
    assert steps(workdir) == steps(uninterrupted)  # nothing logged before the kill is lost
    best = lambda w: (w / "best" / "model.safetensors").read_bytes()
    assert best(workdir) == best(uninterrupted)
    assert not [p.name for p in workdir.iterdir() if p.name.startswith(".")]  # no staging or lock left
