"""The process's memory: XLA:CPU's schedule, the malloc policy, releasing freed memory between
phases, JAX's staging caches, the resident size and the memory cap.

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
  (`malloc_trim`) when a phase ends (an evaluation, a checkpoint, an export, a compilation),
  and between steps (`between_steps`) once the kept memory passes the keep limit
  (`keep_limit_bytes`: about one step's XLA temporaries), or would pass it beside a larger
  step, or when malloc would give the next step new pages beside it and no free chunk with
  pages fits it. Each step's block is placed where the next one of its size fits again (a
  pad before it): the steps of a phase reuse their memory at `keep`'s speed;
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
import gc
import logging
import mmap
import os
import time
from pathlib import Path
from typing import Callable, MutableMapping

import numpy as np

from theseus_jax.errors import UserError

log = logging.getLogger("theseus_jax")

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -3, -4, -8
XLA_SCHEDULER_FLAG = "--xla_cpu_scheduler_type"
MEMORY_SCHEDULER = "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
MALLOC_POLICY = "THESEUS_KEEP_FREED_MEMORY"
POLICIES = ("phases", "lean", "keep", "0")
TRIM_SHARE = 0.9  # under a cap, kept memory is returned once the resident size passes this share of it
RAM_SHARE = 0.4  # without a cap, once it passes this share of the machine's memory
KEPT_STEPS = 1.25  # and once it holds this many steps' temporaries beyond the resident size after a release
LARGE_TEMPORARIES = 64 << 20  # steps with smaller temporaries do not wait for them (`between_steps`)
FREED_WAIT_S = 0.1  # the longest wait for a step's temporaries to be freed (`_await_freed_temporaries`)
FREED_SLACK = 64 << 20  # what other threads may allocate meanwhile (batches on their way)
STEER_TRIES = 4  # free chunks without pages held before the kept memory goes back instead (`_steer_next_block`)
PAD_BYTES = 4096  # held before a step's block (`_pad_next_block`): above glibc's tcache and fastbin sizes

_release = False  # the policy trims
_cap_bytes = 0  # max_memory_gb in bytes; 0 = no cap
_step_temporaries = 0  # the largest XLA temporary allocation of the training steps compiled so far
_released_rss = 0  # the resident size after the last release between phases: the process without kept memory
_in_use_before_step = 0  # malloc's bytes in use before the last step was dispatched (`between_steps`)
_place_blocks = False  # steps' blocks stay in malloc's heap ("phases"), where `between_steps` places them
_held: list[int] = []  # blocks held while the last step ran, freed once it is done (`_free_held`)

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
    global _release, _place_blocks
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
    _release, _place_blocks = policy in ("phases", "lean"), policy == "phases"
    return policy


def _await_freed_temporaries() -> None:
    """Waits, at most `FREED_WAIT_S`, until malloc's bytes in use are back where they were
    before the last training step was dispatched (`between_steps`): XLA:CPU frees a step's
    temporaries on its own thread just after the step's outputs are ready. Then frees the blocks
    held while it ran (`_free_held`), which join its freed block."""
    global _in_use_before_step
    if _in_use_before_step:
        deadline = time.monotonic() + FREED_WAIT_S
        while heap_in_use_bytes() > _in_use_before_step + FREED_SLACK and time.monotonic() < deadline:
            time.sleep(0.001)
    _in_use_before_step = 0
    _free_held()


def release_freed_memory(step_running: bool = False) -> bool:
    """Returns the free pages of malloc's heap to the kernel (glibc `malloc_trim`) under the
    "phases" and "lean" policies; called when an evaluation, a checkpoint or an export ends,
    and before a compilation. Unless a step is running, the last step's temporaries are
    awaited first, and the resident size after it is the process without kept memory
    (`keep_limit_bytes`; counted with a step's temporaries not yet freed, a kept step's
    block would seem too large for the kept memory, and go back before every large step).
    True when something was released."""
    global _released_rss
    trim = getattr(_libc(), "malloc_trim", None) if _release else None
    if trim and not step_running:
        _await_freed_temporaries()
    released = bool(trim and trim(0))
    if not step_running:
        _released_rss = rss_bytes() if trim else 0
    return released


def drop_staging_caches() -> None:
    """Drops JAX's tracing and lowering caches (jaxprs, MLIR modules and their references to
    the executables: tens of MB per compiled training shape of a base-size model, kept for
    the whole process). Each jitted function's dispatch cache keeps its executables, so a
    shape that has run through its jitted function does not compile again; one compiled only
    ahead of time (`.lower().compile()`) and not yet called would. Eager operations' jitted
    callables stay too: small, and every one would compile again after each drop. Private JAX
    names (`jax.clear_caches` would drop the executables too): where they are gone, nothing
    is dropped."""
    from jax._src import dispatch, util as jax_util

    caches = getattr(jax_util, "_caches", None)
    eager = getattr(dispatch, "xla_primitive_callable", None)
    for cache in list(caches or ()):
        if cache is not eager:
            cache.cache_clear()


def note_step_temporaries(analysis: object) -> int:
    """Records a compiled training step's temporary bytes (`compiled.memory_analysis()`; None
    where the backend reports none) for `keep_limit_bytes`, and returns them."""
    global _step_temporaries
    temporaries = int(getattr(analysis, "temp_size_in_bytes", 0) or 0)
    _step_temporaries = max(_step_temporaries, temporaries)
    return temporaries


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
    """The resident size that passed the cap (both in bytes): reached (`over_cap`), or needed
    by a step of `batch_shape` whose XLA temporaries are `temporaries` bytes (`step_over_cap`)."""

    peak: int
    cap: int
    temporaries: int = 0
    batch_shape: tuple[int, ...] = ()

    def size(self) -> str:
        if not self.batch_shape:
            return f"resident memory reached {self.peak / 1e9:.2f} GB"
        return (f"a training step of batch shape {' x '.join(map(str, self.batch_shape))} needs about "
                f"{self.peak / 1e9:.2f} GB ({(self.peak - self.temporaries) / 1e9:.2f} GB resident + "
                f"{self.temporaries / 1e9:.2f} GB of XLA temporaries)")

    def message(self, where: str) -> str:
        return (f"{self.size()}, over max_memory_gb={self.cap / 1e9:g}, {where}; lower batch_size or max_length, "
                "raise accumulation_steps, set model.remat=True, or raise max_memory_gb, then rerun the same command "
                "to resume")


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
    or without one `RAM_SHARE` of `machine_memory_bytes` (two such jobs fit side by side); and
    at most `KEPT_STEPS` times the largest step's temporaries (`note_step_temporaries`) beyond
    the resident size after the last release at a phase's end: the next step reuses one
    block of that size; more is memory glibc did not reuse, and it only grows while kept."""
    limit = int(TRIM_SHARE * _cap_bytes) if _cap_bytes else int(RAM_SHARE * machine_memory_bytes())
    if _step_temporaries and _released_rss:
        limit = min(limit, _released_rss + int(KEPT_STEPS * _step_temporaries))
    return limit


class _MallocInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _mallinfo2() -> Callable[[], _MallocInfo] | None:
    mallinfo2 = getattr(_libc(), "mallinfo2", None)  # glibc 2.33 and later
    if mallinfo2 is not None:
        mallinfo2.restype = _MallocInfo
    return mallinfo2


def heap_in_use_bytes() -> int:
    """Bytes malloc has handed out and not had back (glibc `mallinfo2`); 0 where it is absent."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return 0
    info = mallinfo2()
    return info.uordblks + info.hblkhd


XLA_ALIGNMENT = 64  # XLA:CPU takes its buffers with posix_memalign at this alignment
_SIZE_T = ctypes.sizeof(ctypes.c_size_t)
_MIN_CHUNK = 4 * _SIZE_T  # glibc's MINSIZE


def _chunk_bytes(request: int) -> int:
    """The size of the chunk glibc's malloc gives a `request`-byte block: the request plus its
    size header, rounded up to 2 * size_t, at least MINSIZE. The next chunk's block starts this
    many bytes after this one's."""
    return max(_MIN_CHUNK, (request + _SIZE_T + 2 * _SIZE_T - 1) & -(2 * _SIZE_T))


def _memalign_request(size: int, alignment: int = XLA_ALIGNMENT) -> int:
    """The request glibc's `posix_memalign(size, alignment)` passes to its best-fit search:
    the chunk for `size` plus room to align it. A `malloc` of this many bytes is given the same
    free chunk."""
    return _chunk_bytes(size) + alignment + _MIN_CHUNK


@functools.cache
def _block_functions() -> tuple[Callable, Callable, Callable, Callable] | None:
    """glibc's malloc, realloc, mincore and free, looked up once: ctypes stores a function in the
    library object on first use, an allocation that must not happen while a probe block is held."""
    libc = _libc()
    if libc is None or not all(hasattr(libc, name) for name in ("malloc", "realloc", "mincore", "free")):
        return None
    malloc, realloc, mincore, free = libc.malloc, libc.realloc, libc.mincore, libc.free
    malloc.restype, malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    realloc.restype, realloc.argtypes = ctypes.c_void_p, (ctypes.c_void_p, ctypes.c_size_t)
    mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    free.restype, free.argtypes = None, (ctypes.c_void_p,)
    return malloc, realloc, mincore, free


@dataclasses.dataclass(frozen=True)
class NextBlock:
    """Where malloc would put a block now (its address) and how many of its bytes have pages."""

    address: int
    resident: int


def next_block(size: int) -> NextBlock | None:
    """The block malloc would hand out now for a `size`-byte XLA:CPU buffer (`posix_memalign`,
    64-byte aligned): a block of the same best-fit request is taken with plain `malloc`, its
    pages are counted (`mincore`) and it is given back. Taken so, it leaves nothing behind:
    `posix_memalign` would hand the slack around the aligned block back as small chunks beside
    it, which keep it from joining its free neighbours again, so the next block of that size
    would go elsewhere. Nothing else is taken from malloc meanwhile (the page vector is mapped
    outside its heap, collection waits). None where glibc's functions are absent."""
    functions = _block_functions()
    if functions is None:
        return None
    malloc, _, mincore, free = functions
    request, page = _memalign_request(size), os.sysconf("SC_PAGE_SIZE")
    vector = mmap.mmap(-1, request // page + 1)
    view = (ctypes.c_ubyte * len(vector)).from_buffer(vector)
    block, pages, counted, collecting = 0, 0, False, gc.isenabled()
    gc.disable()
    try:
        block = malloc(request) or 0
        if block:
            start = -(-block // page) * page
            pages = (block + request - start) // page
            counted = mincore(start, pages * page, view) == 0
    finally:
        if block:
            free(block)
        if collecting:
            gc.enable()
    del view
    resident = int((np.frombuffer(vector, np.uint8, count=pages) & 1).sum()) * page if counted else None
    vector.close()
    return NextBlock(block, resident) if resident is not None else None


def _hold(request: int) -> int:
    """Takes a `request`-byte block from malloc and holds it until the next step is done
    (`_free_held`); 0 where malloc gives none."""
    block = _block_functions()[0](request) or 0
    if block:
        _held.append(block)
    return block


def _unhold() -> None:
    """Frees the block held last."""
    _block_functions()[3](_held.pop())


def _free_held() -> None:
    """Frees the blocks held while the last step ran (`_steer_next_block`, `_pad_next_block`)."""
    while _held:
        _unhold()


def _next_block_address(size: int) -> int:
    """Where malloc would put the next step's block now, as `next_block` finds it, without counting pages."""
    malloc, _, _, free = _block_functions()
    block = malloc(_memalign_request(size)) or 0
    free(block)
    return block


def _steer_next_block(temporaries: int, kept: int) -> bool:
    """Keeps the next step's block out of free chunks without pages while `kept` bytes of freed
    memory stay in memory elsewhere; True where it would still take pages anew beside them.
    glibc gives a block the best-fitting free chunk, which may be one whose pages went back at
    a release, not the kept one: such a chunk is held while the step runs (its pages stay
    without memory), and the block goes to the next best fit, up to `STEER_TRIES` times.
    Without this, the kept memory would go back, and the next step of another size would fault
    it in again. Under "lean" the block is mapped apart from the heap: nothing to steer."""
    if temporaries < LARGE_TEMPORARIES or kept < LARGE_TEMPORARIES:
        return False
    if not _place_blocks:  # the probe would map a fresh block without pages: the kept memory goes back
        return True
    request, block = _memalign_request(temporaries), next_block(temporaries)
    for _ in range(STEER_TRIES):
        if block is None or temporaries - block.resident < LARGE_TEMPORARIES or kept - block.resident < LARGE_TEMPORARIES:
            return False
        held = _hold(request)
        if not held:
            return True
        after = next_block(temporaries) if held == block.address else None
        if after is None or after.address == held + _chunk_bytes(request):  # the top of the heap: no other chunk fits
            _unhold()
            return True
        block = after
    return True


def _pad_next_block(temporaries: int) -> None:
    """Holds a small block (`PAD_BYTES`) where the next step's block would start, so that block
    starts just after it, 64-byte aligned. Freed after the step, the pad joins the block's
    freed chunk: `posix_memalign` searches for the block's size plus 96 bytes of alignment
    slack, so a chunk of just the block's size (where a small allocation that outlives the
    step lies right after it) would not take the same block again, which would go to new pages."""
    if temporaries < LARGE_TEMPORARIES or _block_functions() is None:
        return
    start = _hold(_memalign_request(temporaries))  # the chunk the block would take
    if not start:
        return
    pad = PAD_BYTES + (-(start + PAD_BYTES)) % XLA_ALIGNMENT  # the pad's chunk: the block's start is aligned
    shrunk = _block_functions()[1](start, pad - 2 * _SIZE_T)  # glibc shrinks in place; the tail joins the free chunk after it
    if shrunk != start:  # moved (freeing start) or refused (keeping it): whichever is ours goes
        _held[-1] = shrunk or start
        _unhold()
    elif _next_block_address(temporaries) != start + pad:  # the rest of the chunk is too small: the block goes elsewhere
        _unhold()


def between_steps(temporaries: int) -> None:
    """Called once a training step's outputs are ready, before the next one (whose XLA
    temporaries are `temporaries` bytes) is dispatched; only under the trimming policies.

    XLA:CPU frees a step's temporaries on its own thread just after the step's outputs are
    ready, and takes the next step's when that step is dispatched: dispatched before the free,
    it gets a block of its own beside them. So this first waits for them
    (`_await_freed_temporaries`, where the steps' temporaries are `LARGE_TEMPORARIES` or
    more). Then the kept memory goes back to the kernel
    if the resident size passes `keep_limit_bytes`, or would pass it once a step whose
    temporaries are more than all the kept memory (which they cannot fit in) takes a block
    beside it; under a cap, once any step's temporaries in new memory would pass
    `TRIM_SHARE` of it (malloc may leave the kept memory unused: docs/memory-benchmarks.md);
    and when the block malloc would give the step lies on pages without memory while the kept
    memory stays elsewhere and no other free chunk with pages fits it (`_steer_next_block`).
    Under "phases", a pad is held before the block (`_pad_next_block`).
    """
    global _in_use_before_step
    if not _release:
        return
    _await_freed_temporaries()
    rss = rss_bytes()
    kept = rss - _released_rss  # all of it where nothing was released yet
    cannot_fit = bool(_released_rss) and temporaries > kept  # more than all the kept memory
    # near the cap, reuse is not counted on: glibc's best fit may pick a hole without pages
    near_cap = bool(_cap_bytes) and rss + temporaries > TRIM_SHARE * _cap_bytes
    if rss + (temporaries if cannot_fit or near_cap else 0) > keep_limit_bytes() or _steer_next_block(temporaries, kept):
        _free_held()
        release_freed_memory(step_running=True)
    if _place_blocks:
        _pad_next_block(temporaries)
    _in_use_before_step = heap_in_use_bytes() if _step_temporaries >= LARGE_TEMPORARIES else 0


def over_cap() -> OverCap | None:
    """The peak resident size if it passed the cap set by `set_cap`, else None: checked after
    the fact, as what is resident beside a step (kept memory, glibc's holes, evaluations)
    depends on the allocator and the phases (docs/memory-benchmarks.md)."""
    peak = peak_rss_bytes()
    return OverCap(peak, _cap_bytes) if _cap_bytes and peak > _cap_bytes else None


def step_over_cap(temporaries: int, batch_shape: tuple[int, ...]) -> OverCap | None:
    """Before the first step of a batch shape, after `between_steps` (the steps before it and
    their temporaries are done): the resident size without kept memory plus the step's XLA
    temporaries (`note_step_temporaries`), if that passes the cap, else None. The temporaries
    are one block, taken when the step is dispatched, so a run that cannot fit stops before
    the step rather than after it; glibc's holes may add more, which `over_cap` catches after
    the fact."""
    if not _cap_bytes:
        return None
    release_freed_memory()
    need = OverCap(rss_bytes() + temporaries, _cap_bytes, temporaries, tuple(batch_shape))
    log.info("%s; max_memory_gb=%g", need.size(), _cap_bytes / 1e9)
    return need if need.peak > _cap_bytes else None
