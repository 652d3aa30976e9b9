"""The signal handlers behind a graceful stop: the first SIGTERM or SIGINT is noted for
the trainer, a second one stops the process at once, and leaving the block restores the
handlers it found; the grid waits while its launch.py saves. (launch.py end to end:
tests/test_experiments.py and, across hosts, tests/test_multihost_launch.py.)"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_is_noted_and_the_second_stops_at_once(signum):
    code = f"""
        import os, time
        from theseus_jax.experiments import preemption
        with preemption.stop_on_signals():
            assert preemption.requested(1) is None
            os.kill(os.getpid(), {int(signum)})
            print("noted", preemption.requested(1), flush=True)
            os.kill(os.getpid(), {int(signum)})
            time.sleep(30)
            print("still running", flush=True)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == -signum, result.stderr[-2000:]
    assert result.stdout == f"noted {int(signum)}\n"
    assert f"{signum.name} received: finishing the step in flight" in result.stderr


def test_leaving_the_block_restores_the_handlers_and_forgets_the_signal():
    from theseus_jax.experiments import preemption

    def mine(signum, frame):
        raise AssertionError("not reached")

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with preemption.stop_on_signals():
            assert signal.getsignal(signal.SIGTERM) is not mine
        assert signal.getsignal(signal.SIGTERM) is mine
        assert preemption.requested(1) is None
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_in_the_grid_lets_its_launch_save_before_the_grid_stops(tmp_path):
    """The terminal's Ctrl-C goes to the grid and its launch.py alike; the grid must wait
    while launch.py saves (here a stand-in that takes a second to save and exits 130)."""
    ready, saved = tmp_path / "ready", tmp_path / "saved"
    stand_in = tmp_path / "launch.py"
    stand_in.write_text(textwrap.dedent(f"""
        import pathlib, signal, sys, time
        def save(signum, frame):
            time.sleep(1.0)
            pathlib.Path({str(saved)!r}).write_text("step")
            sys.exit(130)
        signal.signal(signal.SIGINT, save)
        pathlib.Path({str(ready)!r}).write_text("")
        time.sleep(60)
    """))
    code = f"""
        import sys
        from pathlib import Path
        from theseus_jax.analysis import grid
        from theseus_jax.errors import run_cli
        grid.LAUNCH = Path({str(stand_in)!r})
        sys.exit(run_cli(lambda: grid.launch_point("config.py", Path({str(tmp_path / 'point')!r}), []), "grid"))
    """
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.time() + 60
    while not ready.exists():
        assert time.time() < deadline and process.poll() is None, process.stderr.read()[-2000:]
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    _, stderr = process.communicate(timeout=60)
    assert saved.read_text() == "step"
    assert process.returncode == 2, stderr[-2000:]
    assert stderr.strip() == (f"grid: error: {tmp_path / 'point'}: launch.py stopped on a signal after saving its "
                              "checkpoint; rerun the same command to resume")
