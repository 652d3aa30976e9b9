"""The process's memory: XLA:CPU's schedule, the malloc policy, releasing freed memory between
phases, the resident size and the memory cap.

XLA:CPU's default scheduler orders a step's operations so that independent ones can run at
once, which keeps more of the step's temporary buffers alive together; its memory-optimized
scheduler computes the same results in an order that needs less (`with_memory_scheduler`).

XLA:CPU frees a step's temporary buffers (gigabytes for a 12-layer model) when the step
ends, and glibc's malloc hands large blocks straight back to the kernel (mmap above a
threshold that adapts up to 32 MiB, heap trimming), so every step page-faults them in
again. The policies (`THESEUS_KEEP_FREED_MEMORY`):
- `keep`: one arena, no mmap, no automatic trimming: freed memory stays for the next step;
  over a whole stage the heap only grows, as evaluations, checkpoints and exports leave
  holes of other sizes than the steps';
- `phases` (default): as `keep`, and the heap's free pages go back to the kernel
  (`malloc_trim`) when a phase ends (an evaluation, a checkpoint, an export), and between
  steps once the resident size passes the keep limit (`keep_limit_bytes`: 90% of
  `max_memory_gb`, or without a cap 40% of the machine's memory, so that a second job fits):
  the steps of a phase reuse their memory at `keep`'s speed while it is below that;
- `lean`: as `phases`, with blocks over 32 MiB (glibc's largest mmap threshold) mapped and
  returned at once: no holes from them, at the price of faulting them in every step;
- `0`: glibc's defaults.
Measured memory and speed of each: docs/memory-benchmarks.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import os
from pathlib import Path
from typing import MutableMapping

from theseus_jax.errors import UserError

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -3, -4, -8
XLA_SCHEDULER_FLAG = "--xla_cpu_scheduler_type"
MEMORY_SCHEDULER = "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
MALLOC_POLICY = "THESEUS_KEEP_FREED_MEMORY"
POLICIES = ("phases", "lean", "keep", "0")
_release = False
_cap_bytes = 0  # max_memory_gb in bytes; 0 = no cap
TRIM_SHARE = 0.9  # under a cap, kept memory is returned once the resident size passes this share of it
RAM_SHARE = 0.4  # without a cap, once it passes this share of the machine's memory


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def with_memory_scheduler(xla_flags: str) -> str:
    """`xla_flags` with XLA:CPU's memory-optimized scheduler first (XLA stops reading at the first
    token that is not a flag), unless they already choose a scheduler."""
    if XLA_SCHEDULER_FLAG in xla_flags:
        return xla_flags
    return f"{XLA_SCHEDULER_FLAG}={MEMORY_SCHEDULER} {xla_flags}".strip()


def configure_memory(environ: MutableMapping[str, str] = os.environ) -> str:
    """Sets XLA:CPU's memory-optimized scheduler (in `environ["XLA_FLAGS"]`, read when JAX
    compiles its first computation) and the process's malloc policy from
    THESEUS_KEEP_FREED_MEMORY (`POLICIES`; "1" or unset: "phases"). launch.py and the
    benchmarks call it before JAX's first computation. Returns the malloc policy in force ("0"
    where there is no glibc `mallopt`)."""
    global _release
    policy = environ.get(MALLOC_POLICY, "phases").strip() or "phases"
    policy = "phases" if policy == "1" else policy
    if policy not in POLICIES:
        raise UserError(f"{MALLOC_POLICY}={policy}: unknown malloc policy; choose one of {', '.join(POLICIES)}")
    environ["XLA_FLAGS"] = with_memory_scheduler(environ.get("XLA_FLAGS", ""))
    mallopt = getattr(_libc(), "mallopt", None)
    if policy == "0" or mallopt is None:
        return "0"
    settings = ((M_ARENA_MAX, 1), (M_TRIM_THRESHOLD, -1))  # -1: never trim on its own
    if policy == "lean":
        settings += ((M_MMAP_THRESHOLD, 32 << 20), (M_TOP_PAD, 64 << 20))
    else:
        settings += ((M_MMAP_MAX, 0),)
    if not all(mallopt(param, value) == 1 for param, value in settings):
        return "0"
    _release = policy in ("phases", "lean")
    return policy


def release_freed_memory() -> bool:
    """Returns the free pages of malloc's heap to the kernel (glibc `malloc_trim`) under the
    "phases" and "lean" policies; called when an evaluation, a checkpoint or an export ends. True when
    something was released."""
    trim = getattr(_libc(), "malloc_trim", None) if _release else None
    return bool(trim and trim(0))


def proc_status_bytes(field: str) -> int:
    """A size field of /proc/self/status (`VmRSS`, `VmHWM`, ...) in bytes; 0 where /proc is absent."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """The process's resident memory now (VmRSS)."""
    return proc_status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryCapExceeded(UserError):
    """The process's resident memory passed `max_memory_gb`; raised where a checkpoint was
    just saved, so a rerun resumes (with a higher cap, or with the knobs the message names)."""


@dataclasses.dataclass(frozen=True)
class OverCap:
    """The peak resident size that passed the cap (both in bytes)."""

    peak: int
    cap: int

    def message(self, where: str) -> str:
        return (f"resident memory reached {self.peak / 1e9:.2f} GB, over max_memory_gb={self.cap / 1e9:g}, {where}; "
                "lower batch_size or max_length, raise accumulation_steps, set model.remat=True, or raise "
                "max_memory_gb, then rerun the same command to resume")


def set_cap(gigabytes: float) -> None:
    """The process's memory cap (`max_memory_gb`; 0 = none), which `over_cap` checks."""
    global _cap_bytes
    _cap_bytes = int(gigabytes * 1e9)


@functools.cache
def machine_memory_bytes() -> int:
    """The memory this process may use: the machine's, or its cgroup's limit where lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def keep_limit_bytes() -> int:
    """The resident size up to which freed memory is kept between steps: `TRIM_SHARE` of the cap,
    or without one `RAM_SHARE` of `machine_memory_bytes` (two such jobs fit side by side)."""
    return int(TRIM_SHARE * _cap_bytes) if _cap_bytes else int(RAM_SHARE * machine_memory_bytes())


def trim_over_keep_limit() -> bool:
    """Returns the heap's free pages (as at a phase end) once the resident size passes
    `keep_limit_bytes`: memory kept for speed gives way before the machine or the cap runs out.
    Called between training steps (only the trimming policies read the resident size); True
    when it trimmed."""
    return _release and rss_bytes() > keep_limit_bytes() and release_freed_memory()


def over_cap() -> OverCap | None:
    """The peak resident size if it passed the cap set by `set_cap`, else None. A prediction
    before training is not offered: XLA:CPU reports no buffer sizes, and the resident size
    depends on the allocator and the phases (docs/memory-benchmarks.md)."""
    peak = peak_rss_bytes()
    return OverCap(peak, _cap_bytes) if _cap_bytes and peak > _cap_bytes else None
