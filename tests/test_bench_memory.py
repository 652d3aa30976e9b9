"""bench_memory's per-process peak: the kernel's rusage of the finished child, checked against
a child that touches a known number of bytes."""

import sys

from benchmarks.bench_memory import run_child

MIB = 1 << 20


def test_the_childs_peak_counts_what_it_touched():
    status, peak, out = run_child([sys.executable, "-c", f"b = bytearray({300 * MIB}); print(len(b))"], {})
    assert status == 0 and out.strip() == str(300 * MIB)
    assert 300 * MIB <= peak < 300 * MIB + 200 * MIB  # the bytes plus an interpreter


def test_a_failing_child_reports_its_status():
    status, _, _ = run_child([sys.executable, "-c", "raise SystemExit(3)"], {})
    assert status == 3
