"""bench_memory's per-process peak: the kernel's rusage of the finished child, checked against
a child that touches a known number of bytes."""

import sys

from benchmarks.bench_memory import run_child

MIB = 1 << 20


def test_the_childs_peak_counts_what_it_touched():
    """At least the child's own VmHWM (Linux also carries the forked copy of the parent into
    ru_maxrss, which is why the benchmark's driver stays small and its rows show both)."""
    code = (f"b = bytearray({300 * MIB}); "
            "print(next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    status, peak, out = run_child([sys.executable, "-c", code], {})
    assert status == 0 and int(out) >= 300 * MIB
    assert peak >= int(out) - 4 * MIB


def test_a_failing_child_reports_its_status():
    status, _, _ = run_child([sys.executable, "-c", "raise SystemExit(3)"], {})
    assert status == 3
