"""The malloc policies, counted by the kernel: a freed block allocated again is faulted in
again (ru_minflt) unless the policy keeps it; the "phases" release hands kept pages back
(VmRSS); and the peak reader against VmHWM."""

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
    assert memory.configure_allocator({memory.MALLOC_POLICY: mode}) == mode
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
RELEASE = """
import ctypes, sys
from theseus_jax import memory
assert memory.configure_allocator({memory.MALLOC_POLICY: sys.argv[1]}) == sys.argv[1]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
blocks = [libc.malloc(1 << 20) for _ in range(256)]  # 256 MiB in the heap
for block in blocks:
    ctypes.memset(block, 1, 1 << 20)
for block in blocks:
    libc.free(ctypes.c_void_p(block))
kept = memory.rss_bytes()
released = memory.release_freed_memory()
print(kept - memory.rss_bytes(), released)
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


def test_an_unknown_policy_is_a_user_error():
    from theseus_jax import memory
    from theseus_jax.errors import UserError

    with pytest.raises(UserError, match="THESEUS_KEEP_FREED_MEMORY=fast: unknown malloc policy; choose one of phases, lean, keep, 0"):
        memory.configure_allocator({memory.MALLOC_POLICY: "fast"})


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
