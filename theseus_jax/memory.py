"""The process's memory: keeping freed memory between training steps, releasing it between
phases, and reading the resident size.

XLA:CPU frees a step's temporary buffers (gigabytes for a 12-layer model) when the step
ends, and glibc's malloc hands such large blocks straight back to the kernel (mmap, heap
trimming), so every step page-faults them in again: a bert-base training step on the
2-core AMD EPYC took about 800,000 page faults and 1.4 s of kernel time out of 5 s
(BENCHMARKS.md). One arena, no mmap for large blocks and no automatic trimming keep the
memory in the process instead. Left at that, a whole stage's heap only grows: evaluations,
checkpoints and exports allocate other sizes than the steps, the free holes they leave do
not fit the next phase, and the resident size reached about twice the live bytes (issue 31,
docs/memory-benchmarks.md). So the trainer releases the free pages (`malloc_trim`) when a
phase ends: the steps of one phase still reuse their memory, the next phase faults in only
what it needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Mapping

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# Set to 0 for glibc's default malloc (freed memory returned at once: slower steps).
KEEP_FREED_MEMORY = "THESEUS_KEEP_FREED_MEMORY"
# Set to 0 to keep freed memory across phases too (the behaviour before issue 31).
RELEASE_FREED_MEMORY = "THESEUS_RELEASE_FREED_MEMORY"
_release = False


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Tunes glibc's malloc as above; False where there is no glibc `mallopt` (nothing changed).

    Call it before JAX starts its threads (before the first computation): threads that
    already own an arena keep it.
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim
    return all(mallopt(param, value) == 1 for param, value in settings)


def configure_allocator(environ: Mapping[str, str] = os.environ) -> bool:
    """The process's malloc policy from the environment (launch.py and the benchmarks call it
    before JAX starts): freed memory kept during phases and released at their ends, unless
    THESEUS_KEEP_FREED_MEMORY=0 or THESEUS_RELEASE_FREED_MEMORY=0. True when malloc was tuned."""
    global _release
    kept = environ.get(KEEP_FREED_MEMORY, "1") != "0" and keep_freed_memory()
    _release = kept and environ.get(RELEASE_FREED_MEMORY, "1") != "0"
    return kept


def release_freed_memory() -> bool:
    """Returns the free pages of malloc's heap to the kernel (glibc `malloc_trim`) where
    `configure_allocator` keeps them; call it when a phase (training chunk, evaluation,
    checkpoint, export) ends. True when something was released."""
    trim = getattr(_libc(), "malloc_trim", None) if _release else None
    return bool(trim and trim(0))


def rss_bytes() -> int:
    """The process's resident memory now (VmRSS; 0 where /proc is absent)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
