"""Stopping on a signal without losing work: SIGTERM (a scheduler's preemption notice) or
Ctrl-C makes the trainer finish the step in flight, save a checkpoint there and stop, so
a rerun of the same command resumes from that step instead of the last periodic one.

One process: `stop_on_signals` notes the signal; a second signal stops at once (the
default action). Several processes: JAX's preemption service (started by
jax.distributed) catches SIGTERM on any host and picks a step every host reaches
(`reached_preemption_sync_point`), so all of them save the same step; Ctrl-C keeps its
default there (stop at once; the last periodic checkpoint resumes).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)
log = logging.getLogger("theseus_jax")
_received: int | None = None


class Stopped(Exception):
    """Training stopped on a signal after saving a checkpoint; `status` is the exit status
    a shell reports for that signal (128 + its number)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.status = 128 + signum


def _note(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signum
    for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL)
    log.warning(
        "%s received: finishing the step in flight and saving a checkpoint (send it again to stop at once)",
        signal.Signals(signum).name,
    )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT ask the trainer to stop at its next step (one
    process; with several, JAX's preemption service handles SIGTERM)."""
    global _received
    _received = None
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return
    previous = {s: signal.signal(s, _note) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received = None


def requested(step: int) -> int | None:
    """The signal that asks training to stop after `step`, or None. Every process of a
    multi-host run must call it at every step (the preemption service's protocol)."""
    if jax.process_count() > 1:
        if not jax.config.jax_enable_preemption_service:
            return None
        return signal.SIGTERM if multihost_utils.reached_preemption_sync_point(step) else None
    return _received
