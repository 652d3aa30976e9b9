"""Where one training step's time goes, op by op.

The step (a `bench_training` case) runs in its own JAX worker (`benchmarks.training_workers`),
so thread pinning and `--xla-flags` are in place before JAX starts. After the compiling first
step and warm-up steps, steps without the profiler give the wall time; then `--steps` steps
run under `jax.profiler.trace`, and the worker saves the step's optimized HLO beside the
trace (`compiled.as_text()`: what `--xla_dump_to` would write, without a dump folder). `benchmarks.xla_profile` joins the two: time per category (matmul by role, RNG,
LayerNorm, optimizer, ...) and per dot shape with its GFLOP/s. Then the worker runs each dot
shape alone (`lax.dot_general` with the step's dimension numbers) and measures the matmul
ceiling: what the step's dots would take at their lone rates, against its wall time, says
how much of the step is matmul kernels and how much is everything around them.

    python -m benchmarks.profile_step --case full-cls --model bert-base --output BENCHMARKS.md
    python -m benchmarks.profile_step --model quick --layers 1 --batch 2 --length 16   # a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Sequence

from benchmarks.arguments import existing_file
from benchmarks.bench_training import CANDIDATES, CASES, MODELS, make_case, model_shape, training_worker
from benchmarks.xla_profile import Row, StepProfile, parse_hlo, step_profile, trace_op_times
from theseus_jax.errors import ArgumentParser

CAVEAT = ("Caveat: XLA's plain `dot` thunks (Eigen kernels, kernel `dot` above; with the default flags mostly the "
          "weight-gradient dots) return before their "
          "work is done, so their busy time is far too small and their busy GFLOP/s meaningless; their "
          "issue-to-done time (thunk start to its completion event) is an upper bound that overlaps other ops. "
          "Independent thunks also run concurrently, so busy times can overlap.")


def run_profile(args: argparse.Namespace, trace_dir: Path) -> tuple[StepProfile, dict[str, Any]]:
    """Runs the case in a fresh worker; (profile per step, wall times and setup reply)."""
    model = model_shape(args.model, args.layers)
    changes, flags, extra_env, _ = CANDIDATES[args.candidate] if args.candidate else ({}, "", {}, "")
    case = make_case(args.case, args, model) | changes
    with training_worker(args, flags=f"{flags} {args.xla_flags}".strip(), extra_env=extra_env) as worker:
        setup = worker.request(op="setup", case=case)
        worker.request(op="steps", count=args.warmup)
        wall = worker.request(op="steps", count=args.measure)["times"]
        traced = worker.request(op="trace", count=args.steps, dir=str(trace_dir))["times"]
        (trace,) = trace_dir.glob("plugins/profile/*/perfetto_trace.json.gz")
        with gzip.open(trace) as f:
            events = json.load(f)["traceEvents"]
        module, runs, times = trace_op_times(events)
        profile = step_profile(times, parse_hlo((trace_dir / "step.hlo.txt").read_text()), runs)
        keys = list(profile.dot_specs)
        lone = worker.request(op="lone_dots", dots=[
            {"lhs": d.lhs, "rhs": d.rhs, "dimension_numbers": d.dimension_numbers} for d in profile.dot_specs.values()])
    return profile, {"model": model, "module": module, "wall_s": wall, "traced_s": traced, "setup": setup,
                     "lone_s": dict(zip(keys, lone["seconds"])), "ceiling_gflops": lone["ceiling_gflops"]}


def _rate(gflop: float, ms: float) -> str:
    return f"{gflop / ms * 1e3:.0f}" if gflop and ms > 0 else ""


def markdown(profile: StepProfile, run: dict[str, Any], args: argparse.Namespace, machine: str,
             load: tuple[float, float]) -> str:
    """The section body: setting, wall time, the category table, the dot table, the caveat."""
    m = run["model"]
    wall_ms, traced_ms = 1e3 * statistics.median(run["wall_s"]), 1e3 * statistics.median(run["traced_s"])
    lines = [
        f"Machine: {machine}; {args.threads} threads; XLA flags: {f'`{args.xla_flags}`' if args.xla_flags else 'none'}; "
        f"1-minute load average {load[0]:.1f} before, {load[1]:.1f} after.",
        f"{args.model} shape ({m['num_hidden_layers']} layers, hidden {m['hidden_size']}, FFN {m['intermediate_size']}, "
        f"vocab {m['vocab_size']}), random weights, case {args.case}, batch {args.batch}, length {args.length}, "
        f"{args.dtype}, dropout on. Compile {run['setup']['compile_s']:.1f} s.",
        f"Step wall time: median {wall_ms:.0f} ms over {len(run['wall_s'])} steps without the profiler "
        f"(after the compiling step and {args.warmup} warm-up), {traced_ms:.0f} ms over the {len(run['traced_s'])} "
        f"traced steps. Summed op busy time per step {profile.busy_ms:.0f} ms = {profile.busy_ms / traced_ms:.2f} x the "
        "traced wall time (> 1: ops overlapped on the threads; < 1: time outside op thunks, or in asynchronous dots).",
    ]
    if profile.unmatched_ms:
        lines.append(f"Traced ops not found in the HLO: {profile.unmatched_ms:.1f} ms per step (left out).")
    lines += [
        "", f"Op time per step from `jax.profiler.trace` of module `{run['module']}`, categories from its optimized HLO "
        "(`benchmarks.xla_profile`: a fusion goes to its most telling op; \"+\" names work fused into it). Busy: the "
        "thunk's own duration; issue-to-done: thunk start to its completion.",
        "", "| category | ops/step | busy ms/step | share of summed busy | issue-to-done ms/step | GFLOP/step | kernels |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in sorted(profile.categories.items(), key=lambda kv: -kv[1].busy_ms):
        lines.append(f"| {name} | {row.count:.0f} | {row.busy_ms:.1f} | {100 * row.busy_ms / profile.busy_ms:.1f}% | "
                     f"{row.span_ms:.1f} | {f'{row.gflop:.1f}' if row.gflop else ''} | {', '.join(sorted(row.kernels))} |")
    lone_ms = {key: 1e3 * s * profile.dots[key].count for key, s in run["lone_s"].items()}  # per step
    dot_gflop = sum(row.gflop for row in profile.dots.values())
    alone = sum(lone_ms.values())
    ceiling = run["ceiling_gflops"]
    lines += ["", "Dots by shape (output <- operands) and role (read off the contracting dimensions); alone: the same "
              "`lax.dot_general` run by itself in the worker, its time per step (calls x median time per call):", "",
              "| dot | role | kernel | count/step | busy ms | issue-to-done ms | GFLOP | GFLOP/s by busy | "
              "GFLOP/s by issue-to-done | alone ms | GFLOP/s alone |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    dots: list[tuple[tuple[str, str], Row]] = sorted(profile.dots.items(), key=lambda kv: -kv[1].span_ms)
    for key, row in dots:
        lines.append(f"| {key[0]} | {key[1]} | {', '.join(sorted(row.kernels))} | {row.count:.0f} | {row.busy_ms:.1f} | "
                     f"{row.span_ms:.1f} | {row.gflop:.2f} | {_rate(row.gflop, row.busy_ms)} | {_rate(row.gflop, row.span_ms)} | "
                     f"{lone_ms[key]:.1f} | {_rate(row.gflop, lone_ms[key])} |")
    lines += ["", f"Alone, the step's dots take {alone:.0f} ms per step ({_rate(dot_gflop, alone)} GFLOP/s; the jitted "
              f"2048^3 float32 matmul in the same worker: {ceiling:.0f} GFLOP/s), {100 * alone / wall_ms:.0f}% of the "
              f"step's {wall_ms:.0f} ms wall time; at the ceiling the step's {dot_gflop:.3g} GFLOP would take "
              f"{dot_gflop / ceiling * 1e3:.0f} ms ({100 * dot_gflop / ceiling * 1e3 / wall_ms:.0f}% of the ceiling for the "
              "step as a whole)."]
    return "\n".join([*lines, "", CAVEAT])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="full-cls", choices=[c for c in CASES if c != "forward"])
    parser.add_argument("--model", default="bert-base", choices=sorted(MODELS))
    parser.add_argument("--layers", type=int, help="encoder layers (default: the model's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for the worker")
    parser.add_argument("--candidate", choices=sorted(CANDIDATES), help="profile this candidate of bench_training --candidates")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the compiling one")
    parser.add_argument("--measure", type=int, default=3, help="steps timed without the profiler")
    parser.add_argument("--steps", type=int, default=2, help="steps traced")
    parser.add_argument("--trace-dir", type=Path, help="keep the trace and HLO here (default: a temporary folder)")
    parser.add_argument("--output", help="BENCHMARKS.md to write the section into")
    parser.add_argument("--notes", type=existing_file, help="Markdown appended to the section")
    args = parser.parse_args(argv)
    if args.trace_dir and args.trace_dir.exists() and any(args.trace_dir.iterdir()):
        parser.error(f"--trace-dir {args.trace_dir} is not empty")
    if args.case.startswith("theseus") and model_shape(args.model, args.layers)["num_hidden_layers"] < 2:
        parser.error("a Theseus case needs at least 2 layers")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from benchmarks.report import machine_description, publish

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        trace_dir = args.trace_dir or Path(tmp)
        trace_dir.mkdir(parents=True, exist_ok=True)
        profile, run = run_profile(args, trace_dir)
    layers = run["model"]["num_hidden_layers"]
    title = (f"Training step profile: where the time goes (op level), {args.model} {layers} layers {args.case}, "
             f"batch {args.batch} x length {args.length}" + (f", XLA flags {args.xla_flags}" if args.xla_flags else "")
             + (f", candidate {args.candidate}" if args.candidate else ""))
    publish(markdown(profile, run, args, machine_description(), (load_before, os.getloadavg()[0])), title,
            "benchmarks.profile_step", argv, args.output, args.notes)


if __name__ == "__main__":
    main()
