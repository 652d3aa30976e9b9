"""The run clock leaves out the time a process was stopped (SIGSTOP, as `kill -STOP` or SLURM's
suspend send), measured from outside by the process that stops it, and counts the time a
process spends computing while it holds the GIL."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from theseus_jax.experiments.run_clock import stopped_seconds

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "gap_s, cpu_s, expected",
    [
        (0.5, 0.9, 0.0),  # on time
        (4.0, 0.0, 0.0),  # late, but not past min_gap_s
        (30.0, 0.2, 29.5),  # stopped: no CPU time in 30 s; one tick of it may have run
        (8.0, 8.0, 0.0),  # a call held the GIL for 8 s on one core: computing, not stopped
        (12.0, 5.8, 0.0),  # at least half of 12 - 0.5 s on the CPU: running (starved at times)
        (12.0, 5.7, 11.5),  # under half: stopped for all but a tick
    ],
)
def test_a_gap_counts_as_stopped_when_the_process_used_under_half_of_it(gap_s, cpu_s, expected):
    assert stopped_seconds(gap_s, cpu_s, tick_s=0.5, min_gap_s=5.0) == pytest.approx(expected)


CHILD = """
    import re, sys, time
    from theseus_jax.experiments.run_clock import RunClock
    clock = RunClock(start_s=10.0, tick_s=0.05, min_gap_s=0.3)
    start = time.perf_counter()
    print("ready", flush=True)
    sys.stdin.readline()
    if {compute}:
        re.match(r"(a+)+$", "a" * 26 + "b")  # C code holding the GIL for 2 s (Intel Xeon, 2026)
    print(time.perf_counter() - start, clock() - 10.0, flush=True)
    clock.close()
"""


def _child(compute: bool) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD.format(compute=compute))], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    return child


def _report(child: subprocess.Popen) -> tuple[float, float]:
    out, _ = child.communicate("go\n", timeout=120)
    wall, clock = map(float, out.split())
    return wall, clock


def test_a_stopped_process_leaves_its_stop_out():
    child = _child(compute=False)
    time.sleep(0.3)
    stop_start = time.perf_counter()
    os.kill(child.pid, signal.SIGSTOP)
    time.sleep(2.0)
    os.kill(child.pid, signal.SIGCONT)
    stopped = time.perf_counter() - stop_start
    time.sleep(0.3)
    wall, clock = _report(child)
    assert wall > stopped + 0.5
    assert wall - clock == pytest.approx(stopped, abs=0.3)


def test_a_process_computing_while_holding_the_gil_counts_all_of_it():
    wall, clock = _report(_child(compute=True))
    assert wall > 0.6  # the heartbeat was late by twice min_gap_s
    assert clock == pytest.approx(wall, abs=0.05)


def test_a_running_process_counts_every_second():
    child = _child(compute=False)
    time.sleep(1.0)
    wall, clock = _report(child)
    assert clock == pytest.approx(wall, abs=0.05)
