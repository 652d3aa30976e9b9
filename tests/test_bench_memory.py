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


def test_the_workers_xla_flags_are_all_read(monkeypatch):
    """XLA stops reading XLA_FLAGS at the first token that is not a --flag: a policy's scheduler
    flag appended after a bare word was silently ignored."""
    from benchmarks.bench_memory import policy_env

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    flags = policy_env("phases-concurrency-schedule", 2)["XLA_FLAGS"].split()
    assert all(flag.startswith("--") for flag in flags)
    assert flags == ["--xla_cpu_enable_fast_math=false", "--xla_cpu_multi_thread_eigen=true",
                     "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"]
