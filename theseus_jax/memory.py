"""Keeping freed memory in the process between training steps.

XLA:CPU frees a step's temporary buffers (gigabytes for a 12-layer model) when the step
ends, and glibc's malloc hands such large blocks straight back to the kernel (mmap, heap
trimming), so every step page-faults them in again: a bert-base training step on the
2-core AMD EPYC took about 800,000 page faults and 1.4 s of kernel time out of 5 s
(BENCHMARKS.md). One arena, no mmap for large blocks and no trimming keep the memory in
the process instead; its resident size then stays at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Tunes glibc's malloc as above; False where there is no glibc `mallopt` (nothing changed).

    Call it before JAX starts its threads (before the first computation): threads that
    already own an arena keep it.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim
    return all(mallopt(param, value) == 1 for param, value in settings)


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
