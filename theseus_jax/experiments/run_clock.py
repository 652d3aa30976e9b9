"""A run's clock: wall-clock seconds less the time its process was stopped.

A run's time until its best step gives the fine-tuning speed-up. A process stopped with
SIGSTOP (`kill -STOP` while a benchmark takes the cores, SLURM's `scontrol suspend`) would
count the whole stop on a plain wall clock, and its model would look that much slower. A
heartbeat thread wakes every `tick_s`; an interval between two wake-ups longer than
`min_gap_s` in which the process used less CPU than half of it means the process got no time
(stopped, or starved by other processes): that interval, less one tick, is left out. An
interval the process spent computing (a long call holding the GIL uses at least one core)
counts. Stops shorter than `min_gap_s`, or than twice the CPU seconds the process's threads
use in one tick, count as running.
"""

from __future__ import annotations

import threading
import time


def stopped_seconds(gap_s: float, cpu_s: float, tick_s: float, min_gap_s: float) -> float:
    """The part of one heartbeat interval (`gap_s` wall, `cpu_s` CPU seconds of the whole
    process) that the process was not running: 0 for an interval on time or one spent
    computing."""
    if gap_s <= min_gap_s or cpu_s >= 0.5 * (gap_s - tick_s):
        return 0.0
    return gap_s - tick_s


class RunClock:
    """`clock()` is the seconds since `start` (a resumed run's seconds so far), stops left out;
    `close()` ends the heartbeat."""

    def __init__(self, start_s: float = 0.0, tick_s: float = 0.5, min_gap_s: float = 5.0) -> None:
        self.tick_s, self.min_gap_s = tick_s, min_gap_s
        self._origin = time.perf_counter() - start_s
        self._stopped = 0.0
        self._last, self._last_cpu = time.perf_counter(), time.process_time()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="run-clock", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._done.wait(self.tick_s):
            self._tick()

    def _tick(self) -> None:
        with self._lock:
            now, cpu = time.perf_counter(), time.process_time()
            self._stopped += stopped_seconds(now - self._last, cpu - self._last_cpu, self.tick_s, self.min_gap_s)
            self._last, self._last_cpu = now, cpu

    def __call__(self) -> float:
        self._tick()  # a stop that ended just now counts, even before the heartbeat wakes
        return time.perf_counter() - self._origin - self._stopped

    def close(self) -> None:
        self._done.set()
        self._heartbeat.join()
