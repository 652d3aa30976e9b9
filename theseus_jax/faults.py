"""Fault injection for crash tests: `THESEUS_KILL_AT=name:n[:SIGNAL]` sends SIGNAL (default
KILL; TERM, INT, ...) to the process the n-th time it reaches `point(name)` (n defaults to 1).

The points sit where a kill hurts most (between the renames of a folder swap, while a
checkpoint is being written, after a training step); unset, a point costs one dictionary
lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "THESEUS_KILL_AT"
_reached: Counter[str] = Counter()


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    count, _, signame = rest.partition(":")
    _reached[name] += 1
    if _reached[name] == int(count or 1):
        os.kill(os.getpid(), signal.Signals[f"SIG{signame or 'KILL'}"])
