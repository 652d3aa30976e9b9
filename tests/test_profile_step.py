"""Op-level profiling (`benchmarks.xla_profile`, `profile_step`): FLOPs against hand
counts, trace totals against hand-made events."""

import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import profile_step, xla_profile

M, K, N = 64, 48, 32  # distinct, so a swapped operand shows in the shapes


def _dropout_loss(w, x, key):
    keep = jax.random.bernoulli(key, 0.9, (M, N))
    return jnp.sum(jnp.tanh(x @ w) * keep)


def test_profiled_gradient_has_hand_counted_dots_and_rng(tmp_path):
    """grad wrt w of sum(tanh(x @ w) * bernoulli mask): a forward x.W and a weight-gradient
    X^T.dY, each 2*M*K*N FLOPs, and threefry ops for the mask."""
    step = jax.jit(jax.grad(_dropout_loss)).lower(jnp.ones((K, N)), jnp.ones((M, K)), jax.random.key(0)).compile()
    args = (jnp.ones((K, N)), jnp.ones((M, K)), jax.random.key(0))
    step(*args).block_until_ready()
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        for _ in range(2):
            step(*args).block_until_ready()
    (trace,) = tmp_path.glob("plugins/profile/*/perfetto_trace.json.gz")
    module, runs, times = xla_profile.trace_op_times(json.load(gzip.open(trace))["traceEvents"])
    profile = xla_profile.step_profile(times, xla_profile.parse_hlo(step.as_text()), runs)

    assert (module, runs, profile.unmatched_ms) == ("jit__dropout_loss", 2, 0.0)
    hand = 2 * M * K * N / 1e9
    forward = profile.dots[(f"f32[{M},{N}] <- f32[{M},{K}] x f32[{K},{N}]", "x.W (forward)")]
    assert forward.count == 1 and forward.gflop == pytest.approx(hand)
    assert sum(row.gflop for row in profile.dots.values()) == pytest.approx(2 * hand)
    assert {role for _, role in profile.dots} == {"x.W (forward)", "X^T.dY (dW)"}
    assert any(name.startswith(xla_profile.RNG) for name in profile.categories)


def test_a_dot_rerun_alone_has_the_steps_shapes_and_flops():
    """Every dot of a compiled step (a Dense gradient and attention's batched products), rerun
    alone from its HLO shapes and dimension numbers, gives the output shape the HLO names and
    the FLOPs counted by hand."""
    from benchmarks.training_workers import lone_dot

    def loss(w, x):
        q = x @ w  # [B, L, K] @ [K, N]
        scores = jnp.einsum("bqn,bkn->bqk", q, q)  # batched over b
        return jnp.sum(jnp.tanh(scores))

    b, length = 3, 7
    step = jax.jit(jax.grad(loss)).lower(jnp.ones((K, N)), jnp.ones((b, length, K))).compile()
    dots = [d for op in xla_profile.parse_hlo(step.as_text()).values() for d in op.dots]
    assert any(d.dimension_numbers[1] != ((), ()) for d in dots)  # batch dimensions were read
    for d in dots:
        out = lone_dot(d.lhs, d.rhs, d.dimension_numbers)()
        assert f"f32[{','.join(map(str, out.shape))}]" == d.output
        (lc, _), _ = d.dimension_numbers
        lhs_dims = [int(n) for n in d.lhs[4:-1].split(",")]
        assert d.gflop == pytest.approx(2 * np.prod(out.shape) * np.prod([lhs_dims[i] for i in lc]) / 1e9)


@pytest.mark.parametrize("fan_in, fan_out", [(N, K), (K, N)])
def test_model_weight_gradients_are_named_dw_though_laid_out_as_forward_products(fan_in, fan_out):
    """models.dense computes the weight gradient as a plain product, x^T . dY ([in, out]) or,
    x being the wider, (dY^T . x)^T ([out, in], then transposed): either way its name scope,
    not its layout, marks it as the weight gradient."""
    from theseus_jax.models.dense import dense_dot_general

    dims = (((1,), (0,)), ((), ()))
    loss = lambda w, x: jnp.sum(jnp.tanh(dense_dot_general(x, w, dims)))
    step = jax.jit(jax.grad(loss)).lower(jnp.ones((fan_in, fan_out)), jnp.ones((M, fan_in))).compile()
    dots = {(d.output, d.role) for op in xla_profile.parse_hlo(step.as_text()).values() for d in op.dots}
    narrow, wide = sorted((fan_in, fan_out))
    assert sorted(dots) == sorted([(f"f32[{narrow},{wide}]", "X^T.dY (dW)"), (f"f32[{M},{fan_out}]", "x.W (forward)")])


def test_trace_totals_pair_completion_events_and_count_runs():
    """Hand-made events: busy sums durations, issue-to-done runs to the "end:" event (or the
    thunk's own end without one), other modules and host events are ignored."""
    op = lambda name, ts, dur, run: {"ph": "X", "name": name, "ts": ts, "dur": dur,  # noqa: E731
                                     "args": {"hlo_module": "m", "hlo_op": name, "run_id": run}}
    events = [
        op("dot.1", 0.0, 1.0, "r1"), {"ph": "X", "name": "end: dot.1", "ts": 5.0, "dur": 0.1},
        op("fusion.2", 1.0, 2.0, "r1"), op("fusion.2", 10.0, 4.0, "r2"),
        {"ph": "X", "name": "fusion.2", "ts": 20.0, "dur": 100.0, "args": {"hlo_module": "other", "run_id": "r3"}},
        {"ph": "X", "name": "$python.py:1 run", "ts": 0.0, "dur": 500.0},
    ]
    module, runs, times = xla_profile.trace_op_times(events, "m")
    assert (module, runs) == ("m", 2)
    assert times["dot.1"] == xla_profile.OpTime(count=1, busy_us=1.0, span_us=5.0)
    assert times["fusion.2"] == xla_profile.OpTime(count=2, busy_us=6.0, span_us=6.0)


HLO = """\
HloModule jit_step, is_scheduled=true

%fused_computation (param_0: f32[8,5], param_1: f32[3,5]) -> f32[8,3] {
  %param_0 = f32[8,5]{1,0} parameter(0)
  %param_1 = f32[3,5]{1,0} parameter(1)
  ROOT %dot.0 = f32[8,3]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={1}
}

%body (arg: (s32[], u32[8])) -> (s32[], u32[8]) {
  %arg = (s32[], u32[8]{0}) parameter(0)
  %bits = u32[8]{0} get-tuple-element(%arg), index=1
  %mixed = u32[8]{0} xor(%bits, %bits)
  %i = s32[] get-tuple-element(%arg), index=0
  ROOT %next = (s32[], u32[8]{0}) tuple(%i, %mixed)
}

%cond (arg.1: (s32[], u32[8])) -> pred[] {
  %arg.1 = (s32[], u32[8]{0}) parameter(0)
  ROOT %done = pred[] constant(false)
}

ENTRY %main (x: f32[8,5], w: f32[3,5], dy: f32[8,3], init: (s32[], u32[8])) -> f32[5,3] {
  %x = f32[8,5]{1,0} parameter(0)
  %w = f32[3,5]{1,0} parameter(1)
  %dy = f32[8,3]{1,0} parameter(2)
  %init = (s32[], u32[8]{0}) parameter(3)
  %ynn_fusion = f32[8,3]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_computation, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %while.1 = (s32[], u32[8]{0}) while(%init), condition=%cond, body=%body
  ROOT %dot.1 = f32[5,3]{1,0} dot(f32[8,5]{1,0} %x, f32[8,3]{1,0} %dy), lhs_contracting_dims={0}, rhs_contracting_dims={0}
}
"""


def test_parse_hlo_reads_fused_and_printed_operand_shapes_and_loop_bodies():
    ops = xla_profile.parse_hlo(HLO)
    assert ops["ynn_fusion"].dots == (xla_profile.Dot(
        "f32[8,3]", "f32[8,5]", "f32[3,5]", "dY.W^T (dX)", 2 * 8 * 5 * 3 / 1e9, (((1,), (1,)), ((), ()))),)
    assert ops["ynn_fusion"].kernel == "fusion __ynn_fusion"
    assert ops["dot.1"].dots == (xla_profile.Dot(
        "f32[5,3]", "f32[8,5]", "f32[8,3]", "X^T.dY (dW)", 2 * 5 * 3 * 8 / 1e9, (((0,), (0,)), ((), ()))),)
    assert ops["bits"].category == ops["mixed"].category == xla_profile.RNG  # inside the bits loop

    times = {"ynn_fusion": xla_profile.OpTime(2, 4000.0, 4000.0), "while.1": xla_profile.OpTime(2, 900.0, 900.0),
             "mixed": xla_profile.OpTime(10, 1000.0, 1000.0), "gone": xla_profile.OpTime(2, 200.0, 200.0)}
    profile = xla_profile.step_profile(times, ops, executions=2)
    assert profile.busy_ms == pytest.approx(2.5)  # the while itself is left out: its body is traced
    assert profile.unmatched_ms == pytest.approx(0.1)
    assert profile.categories[xla_profile.RNG].count == 5


@pytest.mark.parametrize("opcodes, names, expected", [
    ({"exponential", "add"}, ["jit(f)/jvp(M)/attention/exp"], "softmax"),
    ({"exponential", "abs"}, ["jit(f)/jvp(M)/intermediate/erfc"], "GELU"),  # erfc expanded by XLA
    ({"sqrt", "divide"}, ["jit(f)/sqrt", "jit(f)/div"], "optimizer (AdamW, clipping)"),
    ({"xor", "exponential"}, ["jit(f)/jvp(M)/Dropout_0/jit(_bernoulli)/jit(_uniform)/xor", "jit(f)/jvp(M)/exp"],
     f"{xla_profile.RNG} + softmax"),
    ({"copy", "transpose", "parameter"}, [], xla_profile.DATA),
])
def test_categories(opcodes, names, expected):
    assert xla_profile.category(frozenset(opcodes), names) == expected


@pytest.mark.slow  # compiles a 1-layer training step in a worker and traces it: about 30 s
def test_profile_step_writes_its_section(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    profile_step.main(["--model", "quick", "--layers", "1", "--batch", "2", "--length", "16", "--measure", "1",
                       "--steps", "1", "--output", str(output)])
    text = output.read_text()
    assert "## Training step profile: where the time goes (op level), quick 1 layers full-cls" in text
    assert "| matmul x.W (forward) |" in text and profile_step.CAVEAT in text
    assert "GFLOP/s alone |" in text and "Alone, the step's dots take" in text
