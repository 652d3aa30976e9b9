"""keep_freed_memory: a large block freed and allocated again is not faulted in again."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SIZE = 128 << 20  # 128 MiB: 32,768 pages of 4 KiB, above glibc's largest mmap threshold (32 MiB)

SCRIPT = f"""
import ctypes, resource, sys
from theseus_jax.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def touch():
    block = libc.malloc({SIZE})
    ctypes.memset(block, 1, {SIZE})
    libc.free(ctypes.c_void_p(block))
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_of_second_block(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_block_stays_in_the_process():
    pages = SIZE // 4096
    assert _faults_of_second_block("default") >= 0.9 * pages  # glibc unmapped it: every page again
    assert _faults_of_second_block("keep") < 0.01 * pages


def test_peak_rss_counts_a_touched_block():
    """peak_rss_bytes against the kernel's own VmHWM for the same process (an independent reader)."""
    from theseus_jax.memory import peak_rss_bytes

    block = bytearray(SIZE)  # zero-filled: every page touched
    with open("/proc/self/status") as status:
        hwm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    assert len(block) == SIZE
    assert peak_rss_bytes() >= SIZE
    assert abs(peak_rss_bytes() - hwm_kib * 1024) <= 16 << 20
