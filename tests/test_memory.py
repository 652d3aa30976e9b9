"""The malloc policies, counted by the kernel: a freed block allocated again is faulted in
again (ru_minflt) unless the policy keeps it; the "phases" release hands kept pages back
(VmRSS); the fallback without glibc's mallopt; XLA's memory-optimized schedule against its
default (XLA's own buffer assignment, the same step's results); and the peak reader against
VmHWM."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MIB = 1 << 20
SCRIPT = """
import ctypes, resource, sys
from theseus_jax import memory
mode, size = sys.argv[1], int(sys.argv[2])
if mode != "default":
    assert memory.configure_memory({memory.MALLOC_POLICY: mode}) == mode
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(ctypes.c_void_p(block))
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
HEAP_KEPT = """
import ctypes, sys
from theseus_jax import memory
assert memory.configure_memory({memory.MALLOC_POLICY: sys.argv[1]}) == sys.argv[1]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
blocks = [libc.malloc(1 << 20) for _ in range(256)]  # 256 MiB in the heap, kept once freed
for block in blocks:
    ctypes.memset(block, 1, 1 << 20)
for block in blocks:
    libc.free(ctypes.c_void_p(block))
kept = memory.rss_bytes()
"""
RELEASE = HEAP_KEPT + """
released = memory.release_freed_memory()
print(kept - memory.rss_bytes(), released)
"""
NEAR_CAP = HEAP_KEPT + """
memory.set_cap(kept / 1e9 / float(sys.argv[2]))  # the resident size is this share of the cap
trimmed = memory.release_freed_memory
memory.release_freed_memory = lambda **kw: print("trimmed") or trimmed(**kw)
memory.between_steps(int(sys.argv[3]) << 20)  # before a step of these temporaries (MiB)
print(kept - memory.rss_bytes())
"""
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def _faults_of_second_block(mode: str, size: int) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(size)], cwd=REPO, capture_output=True, text=True, check=True)
    return int(out.stdout)


@glibc
@pytest.mark.parametrize("policy", ["keep", "phases"])
def test_the_policies_hold_a_freed_block(policy):
    pages = 128 * MIB // 4096  # above glibc's largest mmap threshold (32 MiB)
    assert _faults_of_second_block("default", 128 * MIB) >= 0.9 * pages  # glibc unmapped it: every page again
    assert _faults_of_second_block(policy, 128 * MIB) < 0.01 * pages


@glibc
def test_lean_holds_step_sized_blocks_and_returns_larger_ones():
    """16 MiB (an attention or FFN buffer): kept; 128 MiB (an embedding-table gradient): mapped
    and returned, so it leaves no hole in the heap."""
    assert _faults_of_second_block("lean", 16 * MIB) < 0.01 * (16 * MIB // 4096)
    assert _faults_of_second_block("lean", 128 * MIB) >= 0.9 * (128 * MIB // 4096)


@glibc
@pytest.mark.parametrize("policy", ["phases", "lean"])
def test_release_returns_the_kept_pages(policy):
    out = subprocess.run([sys.executable, "-c", RELEASE, policy], cwd=REPO, capture_output=True, text=True, check=True)
    dropped, released = out.stdout.split()
    assert released == "True"
    assert int(dropped) >= 200 * MIB


@glibc
@pytest.mark.parametrize("share, step_mib, trims", [(0.95, 0, True), (0.8, 0, False), (0.85, 128, True)])
def test_kept_memory_gives_way_near_the_cap(share, step_mib, trims):
    """Resident at 95% of max_memory_gb: the kept 256 MiB go back to the kernel (VmRSS drops);
    at 80%, below the 90% line, they stay for the next step; at 85%, before a step whose 128 MiB
    of temporaries in new memory would pass the line (the resident size is a few hundred MB, so
    128 MiB is more than 5% of the cap), they go although the step would fit in them."""
    out = subprocess.run([sys.executable, "-c", NEAR_CAP, "phases", str(share), str(step_mib)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    *trimmed, dropped = out.stdout.split()
    assert trimmed == (["trimmed"] if trims else [])
    assert (int(dropped) >= 200 * MIB) == trims


def test_without_a_cap_memory_is_kept_up_to_a_share_of_the_machine(monkeypatch):
    """40% of the machine's memory (os.sysconf, an independent reader: /proc/meminfo's MemTotal)
    without a cap, 90% of the cap with one."""
    from theseus_jax import memory

    with open("/proc/meminfo") as meminfo:
        total = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))
    monkeypatch.setattr(memory, "_cap_bytes", 0)
    monkeypatch.setattr(memory, "_step_temporaries", 0)  # no step compiled: the machine's share alone
    assert abs(memory.keep_limit_bytes() - 0.4 * min(total, memory.machine_memory_bytes())) <= 1
    assert memory.machine_memory_bytes() <= total
    memory.set_cap(10)
    assert memory.keep_limit_bytes() == 9_000_000_000


def test_kept_memory_is_at_most_the_largest_steps_temporaries_beyond_the_released_size(monkeypatch):
    """By hand: released at 2.0 GB, steps of 1.0 and 0.5 GB temporaries: kept up to
    2.0 + 1.25 x 1.0 GB, unless the machine's share or the cap is lower."""
    from types import SimpleNamespace

    from theseus_jax import memory

    monkeypatch.setattr(memory, "_cap_bytes", 0)
    monkeypatch.setattr(memory, "_step_temporaries", 0)
    monkeypatch.setattr(memory, "_released_rss", 2_000_000_000)
    assert memory.note_step_temporaries(SimpleNamespace(temp_size_in_bytes=1_000_000_000)) == 1_000_000_000
    assert memory.note_step_temporaries(SimpleNamespace(temp_size_in_bytes=500_000_000)) == 500_000_000
    assert memory.note_step_temporaries(None) == 0  # a backend without a memory analysis
    assert memory.keep_limit_bytes() == min(3_250_000_000, int(0.4 * memory.machine_memory_bytes()))
    memory.set_cap(3)
    assert memory.keep_limit_bytes() == 2_700_000_000


WAIT_FOR_FREE = """
import ctypes, sys, threading, time
from types import SimpleNamespace
from theseus_jax import memory
assert memory.configure_memory({memory.MALLOC_POLICY: "phases"}) == "phases"
memory.FREED_WAIT_S = float(sys.argv[1])
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
memory.release_freed_memory()
temporaries = memory.note_step_temporaries(SimpleNamespace(temp_size_in_bytes=256 << 20))
memory.between_steps(temporaries)  # notes the bytes in use before the step
block = libc.malloc(256 << 20)  # the step's temporaries, freed by another thread after 50 ms
ctypes.memset(block, 1, 256 << 20)
before = memory.heap_in_use_bytes()
if sys.argv[2] == "free":
    threading.Timer(0.05, lambda: libc.free(ctypes.c_void_p(block))).start()
start = time.perf_counter()
if sys.argv[3] == "between_steps":
    memory.between_steps(temporaries)
else:  # a phase ends: the resident size after the release is the process without kept memory
    memory.release_freed_memory()
print(time.perf_counter() - start, before - memory.heap_in_use_bytes(), memory._released_rss)
"""


@glibc
@pytest.mark.parametrize("freed", [True, False], ids=["freed", "never freed"])
@pytest.mark.parametrize("then", ["between_steps", "release"])
def test_the_next_step_and_a_phase_end_wait_for_the_last_steps_temporaries(freed, then):
    """XLA:CPU frees a step's temporaries on its own thread just after the step's outputs are
    ready: the next step, and a release at a phase's end, wait until malloc (mallinfo2) has
    them back, up to FREED_WAIT_S. The release then measures the process without them."""
    wait = "30" if freed else "0.2"
    out = subprocess.run([sys.executable, "-c", WAIT_FOR_FREE, wait, "free" if freed else "keep", then], cwd=REPO,
                         capture_output=True, text=True, check=True)
    waited, returned, released_rss = out.stdout.split()
    assert float(waited) >= (0.045 if freed else 0.2)
    assert float(waited) < 30
    assert (int(returned) >= 250 * MIB) == freed
    if then == "release":  # the process (a Python interpreter) without the 256 MiB block, or with it
        assert (int(released_rss) < 200 * MIB) == freed


LARGER_STEP = HEAP_KEPT + """
from types import SimpleNamespace
memory._released_rss = kept - (256 << 20)  # the 256 MiB freed above are kept memory
memory.note_step_temporaries(SimpleNamespace(temp_size_in_bytes=384 << 20))  # keep limit: released + 480 MiB
memory.between_steps(256 << 20)  # fits in the kept memory: released + 256 MiB, under the limit
same = kept - memory.rss_bytes()
memory.between_steps(384 << 20)  # does not: beside it, released + 640 MiB would pass the limit
print(same, kept - memory.rss_bytes())
"""


@glibc
def test_kept_memory_goes_before_a_step_it_cannot_hold_would_pass_the_keep_limit():
    out = subprocess.run([sys.executable, "-c", LARGER_STEP, "phases"], cwd=REPO, capture_output=True, text=True,
                         check=True)
    same, larger = map(int, out.stdout.split())
    assert same < 16 * MIB
    assert larger >= 200 * MIB


def test_an_unknown_policy_is_a_user_error():
    from theseus_jax import memory
    from theseus_jax.errors import UserError

    with pytest.raises(UserError, match="THESEUS_KEEP_FREED_MEMORY=fast: unknown malloc policy; choose one of phases, lean, keep, 0"):
        memory.configure_memory({memory.MALLOC_POLICY: "fast"})


@pytest.mark.parametrize("libc", [None, object()], ids=["no libc", "no mallopt"])
def test_without_mallopt_the_policy_falls_back_to_glibc_defaults(monkeypatch, libc):
    """Where the C library is not glibc (musl, macOS) the policy is "0" and nothing is trimmed;
    the XLA schedule is set all the same."""
    from theseus_jax import memory

    monkeypatch.setattr(memory, "_libc", lambda: libc)
    monkeypatch.setattr(memory, "_release", False)
    environ = {memory.MALLOC_POLICY: "phases"}
    assert memory.configure_memory(environ) == "0"
    assert memory.release_freed_memory() is False
    assert environ["XLA_FLAGS"] == f"--xla_cpu_scheduler_type={memory.MEMORY_SCHEDULER}"


@pytest.mark.parametrize("flags, expected", [
    ("", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"),
    ("--xla_cpu_multi_thread_eigen=false", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED --xla_cpu_multi_thread_eigen=false"),
    ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"),
])
def test_the_memory_scheduler_is_added_unless_the_user_chose_one(flags, expected):
    from theseus_jax.memory import with_memory_scheduler

    assert with_memory_scheduler(flags) == expected


def _classifier_step_parts(vocab: int, hidden: int, layers: int, rows: int, length: int):
    """A random BERT classifier (heads of 16 dimensions, a 4x feed-forward), AdamW over all of
    its parameters, and a batch of `rows` x `length` random tokens."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from theseus_jax.models.bert import BertConfig, BertForSequenceClassification
    from theseus_jax.training import optimizer

    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 16,
                        intermediate_size=4 * hidden, max_position_embeddings=length)
    net = BertForSequenceClassification(config)
    params = net.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tx, mask = optimizer.make_optimizer(params, "all", 1e-3)
    ids = np.random.default_rng(0).integers(0, vocab, (rows, length)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
             "labels": np.arange(rows, dtype=np.int32) % 2, "example_mask": np.ones(rows, np.float32)}
    return net, params, tx, mask, batch


def test_the_memory_scheduler_needs_less_for_the_same_step():
    """A 4-layer BERT train step compiled under XLA:CPU's default and memory-optimized
    schedulers: XLA's buffer assignment holds fewer temporary bytes under the latter, and the
    step's loss and parameters are bitwise the same (only the order of operations changes)."""
    import jax
    import numpy as np

    from theseus_jax.memory import MEMORY_SCHEDULER
    from theseus_jax.training import steps

    net, params, tx, mask, batch = _classifier_step_parts(vocab=500, hidden=64, layers=4, rows=8, length=64)
    results = {}
    for scheduler in ("CPU_SCHEDULER_TYPE_DEFAULT", MEMORY_SCHEDULER):
        state = steps.create_train_state(params, tx)
        step = jax.jit(steps.make_train_step(net, tx, mask, "classification"),
                       compiler_options={"xla_cpu_scheduler_type": scheduler})
        compiled = step.lower(state, batch, jax.random.key(1)).compile()
        state, metrics = compiled(state, batch, jax.random.key(1))
        results[scheduler] = (compiled.memory_analysis().temp_size_in_bytes, float(metrics["loss"]),
                              np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)]))
    (default_temp, default_loss, default_params), (temp, loss, new_params) = results.values()
    assert temp < 0.9 * default_temp
    assert loss == default_loss
    np.testing.assert_array_equal(new_params, default_params)


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_a_steps_temporaries_hold_the_embedding_gradient_once(accumulation_steps):
    """A model whose word-embedding table (100k x 32, 12.8 MB) outweighs everything else a
    step holds: XLA's temporaries must hold its gradient once. Dividing the summed loss's
    gradients by the example count, or by their norm when clipping (optax's form), wrote a
    second copy (2.01 tables here before either was changed)."""
    import jax

    from theseus_jax.training import steps

    net, params, tx, mask, batch = _classifier_step_parts(vocab=100_000, hidden=32, layers=2, rows=4, length=16)
    step = jax.jit(steps.make_train_step(net, tx, mask, "classification", accumulation_steps=accumulation_steps),
                   donate_argnums=(0,))
    compiled = step.lower(steps.create_train_state(params, tx), batch, jax.random.key(1)).compile()
    table = 100_000 * 32 * 4
    assert compiled.memory_analysis().temp_size_in_bytes < 1.5 * table


def test_peak_and_current_rss_count_a_touched_block():
    """peak_rss_bytes and rss_bytes against the kernel's own VmHWM / VmRSS for the same process
    (an independent reader)."""
    from theseus_jax.memory import peak_rss_bytes, rss_bytes

    block = bytearray(128 * MIB)  # zero-filled: every page touched
    with open("/proc/self/status") as status:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status if line.startswith(("VmHWM", "VmRSS"))}
    assert len(block) == 128 * MIB
    assert peak_rss_bytes() >= 128 * MIB and rss_bytes() >= 128 * MIB
    assert abs(peak_rss_bytes() - fields["VmHWM"]) <= 16 * MIB
    assert abs(rss_bytes() - fields["VmRSS"]) <= 16 * MIB


def test_without_jaxs_cache_registry_dropping_does_nothing(monkeypatch):
    """The staging caches are dropped through JAX's private registry of caches; where a JAX
    version lacks it, the drop is a no-op, not an error, and jitted functions keep working."""
    import jax
    import jax.numpy as jnp
    from jax._src import util

    from theseus_jax import memory

    double = jax.jit(lambda x: 2 * x)
    assert float(double(jnp.float32(1))) == 2.0
    monkeypatch.delattr(util, "_caches")
    memory.drop_staging_caches()
    assert float(double(jnp.float32(3))) == 6.0


KEPT_BESIDE = """
import ctypes, sys
from theseus_jax import memory
assert memory.configure_memory({memory.MALLOC_POLICY: "phases"}) == "phases"
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
MIB = 1 << 20
def touched(mib):
    block = libc.malloc(mib * MIB)
    ctypes.memset(block, 1, mib * MIB)
    return block
low, guard = touched(256), libc.malloc(MIB)
libc.free(ctypes.c_void_p(low))
memory.release_freed_memory()  # the low block's pages go back; it stays a free chunk below the guard
kept = touched(320)  # too large for the low chunk: taken from the top of the heap
if sys.argv[2] == "bins":  # a guard above it, too large for the low chunk and never written: freed,
    libc.malloc(288 * MIB)  # the kept block becomes a chunk in malloc's bins, not the top
libc.free(ctypes.c_void_p(kept))  # its pages stay: kept memory
step = int(sys.argv[1]) * MIB
resident = memory.next_block(step).resident
before = memory.rss_bytes()
if sys.argv[3] == "between_steps":
    memory.between_steps(step)
after = memory.rss_bytes()
block = ctypes.c_void_p()  # the step's temporaries, taken as XLA:CPU takes them
assert libc.posix_memalign(ctypes.byref(block), ctypes.c_size_t(64), ctypes.c_size_t(step)) == 0
ctypes.memset(block, 1, step)
print(resident // MIB, (before - after) // MIB, (memory.rss_bytes() - after) // MIB)
"""


@glibc
@pytest.mark.parametrize("layout, step_mib, resident_mib, outcome, python_malloc", [
    ("top", 128, 0, "steered", "pymalloc"), ("bins", 128, 0, "steered", "pymalloc"),
    ("bins", 448, 0, "released", "pymalloc"), ("top", 448, 320, "kept", "pymalloc"),
    ("bins", 288, 288, "kept", "pymalloc"), ("bins", 128, 0, "steered", "malloc"),
], ids=["top, fits the free chunk", "bins, fits the free chunk", "bins, fits neither", "top, fits only the top",
        "bins, fits the kept chunk", "bins, fits the free chunk, every Python object from malloc"])
def test_the_step_reuses_kept_memory_or_it_goes_back(layout, step_mib, resident_mib, outcome, python_malloc):
    """320 MiB of freed memory kept with its pages, at the top of the heap or in a chunk of
    malloc's bins, and a 256 MiB free chunk whose pages went back at a release. glibc gives a
    block the best-fitting chunk: a 128 MiB block goes to the chunk without pages, beside the
    kept memory; a 448 MiB block fits neither chunk and takes the top (extending the kept top,
    or beside the kept chunk). `next_block` tells how much of the block has pages (counted
    independently: the resident size's growth when the block is written; the probe must leave
    the heap as it found it, or the block goes elsewhere). `between_steps` holds the chunk
    without pages while the step runs, so the 128 MiB block takes the kept memory; it returns
    the kept memory only where no chunk with pages fits the block."""
    env = {**os.environ, "PYTHONMALLOC": python_malloc}
    run = lambda mode: list(map(int, subprocess.run(
        [sys.executable, "-c", KEPT_BESIDE, str(step_mib), layout, mode], cwd=REPO, env=env,
        capture_output=True, text=True, check=True).stdout.split()))
    resident, _, grown = run("alone")
    assert abs(resident - resident_mib) < 8
    assert abs(grown - (step_mib - resident_mib)) < 16  # the block's pages without memory, written
    _, released, grown_after = run("between_steps")
    if outcome == "released":
        assert released >= 300  # the kept 320 MiB went back ...
        assert abs(grown_after - step_mib) < 16  # ... and the block took as many new pages as before
    elif outcome == "steered":
        assert abs(released) < 16 and abs(grown_after) < 16  # nothing went back; the block reused kept pages
    else:
        assert abs(released) < 16 and abs(grown_after - grown) < 16


PADDED = """
import ctypes, sys
from theseus_jax import memory
assert memory.configure_memory({memory.MALLOC_POLICY: "phases"}) == "phases"
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
step = 256 << 20
def step_block():  # the step's temporaries, taken as XLA:CPU takes them, and written
    block = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(block), ctypes.c_size_t(64), ctypes.c_size_t(step)) == 0
    ctypes.memset(block, 1, step)
    return block
memory.release_freed_memory()
if sys.argv[1] == "between_steps":
    memory.between_steps(step)
block = step_block()  # from the top of the heap
outlives = libc.malloc(64 << 20)  # made during the step, larger than any free chunk: from the top, right after the block
right_after = 0 <= outlives - (block.value + step) < 256
libc.free(block)
if sys.argv[1] == "between_steps":
    memory.between_steps(step)
before = memory.rss_bytes()
step_block()
print((memory.rss_bytes() - before) >> 20, right_after)
"""


@glibc
@pytest.mark.parametrize("mode, new_mib", [("alone", 256), ("between_steps", 0)])
def test_a_step_block_with_an_allocation_right_after_it_is_taken_again(mode, new_mib):
    """A step's block taken from the top of the heap, and an allocation made during the step
    that outlives it, right after the block (checked): the freed chunk is just the block's size, and
    `posix_memalign` of the same size searches for 96 bytes more, so the next step's block goes
    to new pages (counted: the resident size's growth when it is written). The pad
    `between_steps` holds before the block joins its freed chunk, and the same block is taken again."""
    out = subprocess.run([sys.executable, "-c", PADDED, mode], cwd=REPO, capture_output=True, text=True, check=True)
    grown, right_after = out.stdout.split()
    assert right_after == "True"  # the layout the test means to build
    assert abs(int(grown) - new_mib) < 16
