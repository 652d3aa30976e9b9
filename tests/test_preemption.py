"""The signal handlers behind a graceful stop: the first SIGTERM or SIGINT is noted for
the trainer, a second one stops the process at once, and leaving the block restores the
handlers it found. (launch.py end to end: tests/test_experiments.py.)"""

import signal
import subprocess
import sys
import textwrap
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
