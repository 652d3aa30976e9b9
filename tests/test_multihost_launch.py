"""launch.py under jax.distributed for real: two local processes with one CPU device each
(a localhost coordinator) against one process with two simulated devices, and a kill of
both processes followed by a rerun that resumes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = ("--config.cls.epochs=1", "--config.lm.epochs=1", "--config.checkpoint_every_steps=4")


def _env(cache: Path, devices: int, **extra: str) -> dict[str, str]:
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return dict(
        os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=flags, JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra,
    )


def _command(workdir: Path, data: Path, pipeline: str, *overrides: str) -> list[str]:
    return [
        sys.executable, str(REPO / "launch.py"), f"--config={REPO / 'tests' / 'tiny_config.py'}", f"--workdir={workdir}",
        f"--config.cls.data.train_path={data}", f"--config.lm.data.train_path={data}", f"--config.pipeline={pipeline}", *RUN,
        *overrides,
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_two(
    workdir: Path, data: Path, cache: Path, pipeline: str, *overrides: str, second_env: dict | None = None
) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        subprocess.Popen(
            _command(workdir, data, pipeline, *overrides), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=_env(cache, 1, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                     **(second_env or {}) if i == 1 else {}),
        )
        for i in range(2)
    ]


def _finish(processes: list[subprocess.Popen], status: int = 0) -> list[str]:
    errors = [p.communicate(timeout=900)[1] for p in processes]
    for process, stderr in zip(processes, errors):
        assert process.returncode == status, stderr[-3000:]
    return errors


def _params(workdir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(workdir / "best" / "model.safetensors"))


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _steps(workdir: Path) -> list[tuple[int, float]]:
    return [(s["step"], s["loss"]) for s in map(json.loads, (workdir / "steps.jsonl").read_text().splitlines())]


def _history(workdir: Path) -> list[dict]:
    return json.loads((workdir / "report.json").read_text())["history"]


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["cls_compress", "lm_compress"])  # MLM: flat masked positions across devices
def test_two_processes_equal_two_devices_and_resume_after_both_are_killed(tmp_path, germeval_tsv, pipeline):
    cache = tmp_path / "jax_cache"
    single = subprocess.run(_command(tmp_path / "single", germeval_tsv, pipeline), cwd=REPO, capture_output=True, text=True,
                            timeout=900, env=_env(cache, 2))
    assert single.returncode == 0, single.stderr[-3000:]

    hosts = tmp_path / "hosts"
    errors = _finish(_start_two(hosts, germeval_tsv, cache, pipeline))
    assert "starting a new run" in errors[0] and "starting a new run" not in errors[1]  # process 0 claims
    # One epoch, one evaluation: the exported successor holds the final trained parameters.
    assert _max_diff(_params(hosts), _params(tmp_path / "single")) <= 1e-5
    h_hosts, h_single = _history(hosts), _history(tmp_path / "single")
    report = json.loads((hosts / "report.json").read_text())
    train, metric = report["data"]["train"]["count"], report["metric"]
    steps = -(-train // 8)  # one epoch at batch 8
    assert [h["step"] for h in h_hosts] == [h["step"] for h in h_single] == [steps]
    for split in ("validation", "test"):
        assert h_hosts[0][split]["loss"] == pytest.approx(h_single[0][split]["loss"], rel=1e-5)
        assert h_hosts[0][split].get("confusion_matrix") == h_single[0][split].get("confusion_matrix")
    # One writer: every step logged once, no staging folders or lock files left. The
    # losses follow the two-device run's step by step (and training moved them).
    logged = _steps(hosts)
    assert [step for step, _ in logged] == list(range(1, steps + 1))
    np.testing.assert_allclose([loss for _, loss in logged], [loss for _, loss in _steps(tmp_path / "single")], rtol=1e-5)
    assert len({loss for _, loss in logged}) > 1
    assert not [p.name for p in hosts.iterdir() if p.name.startswith(".")]

    killed = tmp_path / "killed"
    processes = _start_two(killed, germeval_tsv, cache, pipeline)
    checkpoints = killed / "checkpoints"
    deadline = time.time() + 600
    while not (checkpoints.exists() and any(p.name.isdigit() and int(p.name) >= 8 for p in checkpoints.iterdir())):
        assert time.time() < deadline and all(p.poll() is None for p in processes), "the run ended before the kill"
        time.sleep(0.2)
    for process in processes:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (killed / "report.json").exists()
    errors = _finish(_start_two(killed, germeval_tsv, cache, pipeline))
    assert "taking over the lock" in errors[0]
    for stderr in errors:
        assert re.search(rf"resuming at step (8|{steps}) ", stderr), stderr[-3000:]
    assert _max_diff(_params(killed), _params(hosts)) <= 1e-5
    assert [h["validation"][metric] for h in _history(killed)] == [h["validation"][metric] for h in h_hosts]
    assert [step for step, _ in _steps(killed)] == list(range(1, steps + 1))  # nothing logged before the kill lost
    np.testing.assert_allclose([loss for _, loss in _steps(killed)], [loss for _, loss in logged], rtol=1e-5)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_saved_step_and_the_rerun_resumes(tmp_path, germeval_tsv):
    """JAX's preemption service spreads process 1's SIGTERM (after its step 2) to process 0
    (its notifier polls about once a second, so a tiny run trains 3 epochs to give it time);
    both save the same step and exit with 143, and the rerun ends where the 2-device run does."""
    cache = tmp_path / "jax_cache"
    longer = "--config.cls.epochs=3"
    single = subprocess.run(_command(tmp_path / "single", germeval_tsv, "cls_compress", longer), cwd=REPO,
                            capture_output=True, text=True, timeout=900, env=_env(cache, 2))
    assert single.returncode == 0, single.stderr[-3000:]

    stopped = tmp_path / "stopped"
    processes = _start_two(stopped, germeval_tsv, cache, "cls_compress", longer,
                           second_env={"THESEUS_KILL_AT": "train_step:2:TERM"})
    lines = [stderr.strip().splitlines()[-1] for stderr in _finish(processes, 143)]
    saved = {int(re.search(r"stopped by SIGTERM at step (\d+) of \d+, checkpoint saved", line).group(1)) for line in lines}
    assert len(saved) == 1, lines
    step = saved.pop()
    assert step > 2  # a step both processes reached after the notice
    assert step in {int(p.name) for p in (stopped / "checkpoints").iterdir() if p.name.isdigit()}
    assert not (stopped / "report.json").exists()

    errors = _finish(_start_two(stopped, germeval_tsv, cache, "cls_compress", longer))
    assert all(f"resuming at step {step} " in stderr for stderr in errors), errors[0][-3000:]
    assert _max_diff(_params(stopped), _params(tmp_path / "single")) <= 1e-5
    steps = len(_steps(tmp_path / "single"))
    assert [s for s, _ in _steps(stopped)] == list(range(1, steps + 1))
    np.testing.assert_allclose([loss for _, loss in _steps(stopped)], [loss for _, loss in _steps(tmp_path / "single")],
                               rtol=1e-5)
