"""bench_memory's per-process peak: the kernel's rusage of the finished child, checked against
a child that touches a known number of bytes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_memory import run_child

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[1]


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


LIVE = """
import json, sys
from pathlib import Path
from benchmarks.bench_memory import jax_work
print(jax_work(json.loads(sys.argv[1]), 4, 1, Path(sys.argv[2]))["live_array_peak_bytes"])
"""


@pytest.mark.slow  # a benchmark's figure, 15-30 s of compiling: pytest -m slow
def test_the_live_arrays_count_each_buffer_once(tmp_path):
    """After the export, `jax.device_get`'s host view of the parameters is a second `jax.Array`
    on the same buffers; the live figure is the train state alone: the parameters and AdamW's
    two moments (three parameter sets, by hand from the model's init), plus a few scalars. In a
    process of its own, as the benchmark runs it (live arrays and malloc settings are per process)."""
    import jax
    import jax.numpy as jnp

    from theseus_jax.models.bert import BertConfig, BertForSequenceClassification

    model = dict(vocab_size=5000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 max_position_embeddings=512, type_vocab_size=2)
    params = BertForSequenceClassification(BertConfig(**model)).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    parameter_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    out = subprocess.run([sys.executable, "-c", LIVE, json.dumps(model), str(tmp_path / "export")], cwd=REPO,
                         capture_output=True, text=True, check=True)
    live = int(out.stdout.split()[-1])
    assert 3 * parameter_bytes <= live <= 3 * parameter_bytes + 1024
