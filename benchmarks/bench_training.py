"""Training-step speed: JAX (ours) beside Hugging Face PyTorch, against the matmul ceiling;
or, with --candidates, our step beside candidate changes of it.

Cases (bert-base shape unless --model, random weights, float32, batch 16, length 128
unless --quick): full fine-tuning (everything trainable, AdamW) and Theseus n -> n/2 at
p = 0.5 and p = 1 (successor layers trainable), each for classification and MLM, plus
the inference forward of n and n/2 layers. Each case runs in two fresh long-lived worker
processes (ours and HF's, `benchmarks.training_workers`), driven alternately round by
round with the same replacement masks; reported: median seconds per step, model GFLOP/s,
percent of the jitted 2048^3 float32 matmul rate measured by the JAX worker of the same
case, the HF/ours ratio (median of paired rounds), compile time of the first step and
peak RSS of each worker.

With --candidates (training cases, default full-cls): a baseline JAX worker lives for the
case and every candidate (an XLA flag, an environment variable or a case change, see
CANDIDATES) runs in a JAX worker of its own, the two alternating step by step; reported:
the median of paired baseline/candidate ratios (> 1: the candidate is faster).

    python -m benchmarks.bench_training --output BENCHMARKS.md
    python -m benchmarks.bench_training --quick          # small model, a sanity check
    python -m benchmarks.bench_training --candidates no_dropout,xla_no_ynn --rounds 6 --output BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Sequence

from benchmarks.arguments import comma_choices, existing_file
from benchmarks.protocol import Worker, encoder_gflops, paired_ratio, thread_env
from benchmarks.training_workers import Case, masked_count
from theseus_jax.errors import ArgumentParser, run_cli

BERT_BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072}
E5_SMALL = {"vocab_size": 250037, "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 1536}  # multilingual-e5-small: XLM-R vocabulary, MiniLM-sized encoder
QUICK_MODEL = {"vocab_size": 30522, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
               "intermediate_size": 1024}
MODELS = {"bert-base": BERT_BASE, "e5-small": E5_SMALL, "quick": QUICK_MODEL}
CASES = ("full-cls", "theseus-0.5-cls", "theseus-1-cls", "full-mlm", "theseus-0.5-mlm", "theseus-1-mlm", "forward")
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
# name -> (case changes, extra XLA flags, extra environment, what it is); measured so far:
# BENCHMARKS.md (issue 22's section and the older candidate tables).
CANDIDATES: dict[str, tuple[dict[str, Any], str, dict[str, str], str]] = {
    "bfloat16": ({"dtype": "bfloat16"}, "", {}, "bfloat16 matmuls, float32 weights, LayerNorm/softmax/loss (`BertConfig.dtype`)"),
    "no_donation": ({"donate": False}, "", {}, "train state not donated (the trainer donates it)"),
    "no_dropout": ({"dropout": False}, "", {}, "diagnostic only: dropout off (deterministic step)"),
    "frozen_word_embeddings": ({"trainable": "all_but_word_embeddings"}, "", {}, "word embeddings frozen (optimizer preset `all_but_word_embeddings`: no table gradient, no AdamW over the table)"),
    "rbg_prng": ({}, "", {"JAX_DEFAULT_PRNG_IMPL": "rbg"}, "every PRNG key (dropout, replacement masks, init) from XLA's RngBitGenerator (`jax_default_prng_impl=rbg`) instead of threefry"),
    "xla_xnnpack": ({}, "--xla_cpu_use_xnnpack=true", {}, "XLA flag"),
    "xla_onednn": ({}, "--xla_cpu_use_onednn=true", {}, "XLA flag"),
    "xla_vector_width_512": ({}, "--xla_cpu_prefer_vector_width=512", {}, "XLA flag"),
    "xla_no_ynn": ({}, NO_YNN, {}, "XLA flag: dots left to XLA's own (Eigen) kernels instead of YNNPACK fusions"),
    "xla_no_ynn_onednn": ({}, f"{NO_YNN} --xla_cpu_use_onednn=true", {}, "XLA flags: no YNNPACK fusions, oneDNN on"),
    "xla_ynn_dot_only": ({}, "--xla_cpu_experimental_ynn_fusion_type=dot", {}, "XLA flag: YNNPACK fusions for dots only (no elementwise or reduce fusions)"),
    "xla_onednn_custom_call": ({}, "--xla_cpu_experimental_onednn_custom_call=true", {}, "XLA flag: oneDNN custom-call thunks"),
    "xla_xnn_graph_greedy": ({}, "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", {}, "XLA flag: greedy XNNPACK subgraph fusion"),
    "xla_serial_scheduler": ({}, "--xla_cpu_enable_concurrency_optimized_scheduler=false", {}, "XLA flag: no concurrent thunks"),
}
Row = dict[str, Any]


def model_shape(name: str, layers: int | None = None) -> dict[str, int]:
    """The BertConfig fields of MODELS[name], with `layers` encoder layers if given."""
    return MODELS[name] | ({"num_hidden_layers": layers} if layers else {})


def make_case(name: str, args: argparse.Namespace, model: dict[str, int]) -> Case:
    """The case `name` (one of CASES) of `model` with args' batch, length and dtype."""
    case: Case = {"name": name, "model": model, "batch": args.batch, "length": args.length, "dtype": args.dtype,
                  "hf_dtype": args.hf_dtype,
                  "objective": "mlm" if name.endswith("mlm") else "classification"}
    layers = model["num_hidden_layers"]
    if name == "forward":
        return case | {"kind": "forward", "layers": [layers, layers // 2]}
    case["kind"] = "train"
    if name.startswith("theseus"):
        case["theseus"] = {"p": float(name.split("-")[1]), "successors": layers // 2}
    return case


def step_gflop(case: Case, mask: list[bool] | None) -> float:
    """Model FLOPs of one step: forward F per executed layer, plus F for the input gradient
    of every layer above a trainable one and F for the weight gradient of every trainable
    layer (3F for a fully trained layer). MLM heads count the labelled positions only."""
    m = case["model"]
    b, length = case["batch"], case["length"]
    layer = b * encoder_gflops(1, m["hidden_size"], m["intermediate_size"], length)
    rows = b * masked_count(length) if case["objective"] == "mlm" else b
    out = m["vocab_size"] if case["objective"] == "mlm" else 2
    head = 2 * rows * m["hidden_size"] * (m["hidden_size"] + out) / 1e9
    if mask is None:  # everything trainable
        return 3 * (m["num_hidden_layers"] * layer + head)
    r = m["num_hidden_layers"] // len(mask)
    stack = [t for replaced in mask for t in ([True] if replaced else [False] * r)]  # trainable?, bottom up
    total, below = len(stack) * layer + head, False
    for trainable in stack:
        total += layer * (below + trainable)
        below |= trainable
    return total + head * below


def training_worker(args: argparse.Namespace, framework: str = "jax", flags: str = "",
                    extra_env: dict[str, str] | None = None) -> Worker:
    """A `training_workers` process pinned to args.threads, with extra XLA flags and environment."""
    env = thread_env(args.threads) | (extra_env or {})
    env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {flags}".strip()
    return Worker("benchmarks.training_workers", [framework, "--threads", str(args.threads)], env)


def run_case(case: Case, args: argparse.Namespace) -> list[Row]:
    with training_worker(args) as ours, training_worker(args, "torch") as hf:
        ceilings = [ours.request(op="ceiling")["gflops"]]
        setup = {"jax": ours.request(op="setup", case=case)}
        setup["torch"] = hf.request(op="setup", case=case, mask=setup["jax"].get("first_mask"))
        per_round: dict[str, dict[str, list[float]]] = {"jax": {}, "torch": {}}
        flops: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            ceilings.append(ours.request(op="ceiling")["gflops"])  # the ceiling drifts with the load too
            if case["kind"] == "forward":
                for framework, worker in (("jax", ours), ("torch", hf)):
                    for layers, ts in worker.request(op="forwards", count=args.steps)["times"].items():
                        per_round[framework].setdefault(f"{layers}", []).append(statistics.median(ts))
            else:
                reply = ours.request(op="steps", count=args.steps)
                theirs = hf.request(op="steps", masks=reply["masks"])["times"]
                # Per step, not per round mean: a Theseus step's cost depends on its mask.
                for key, times in (("jax", reply["times"]), ("torch", theirs)):
                    per_round[key].setdefault("step", []).append(sum(times))
                flops.setdefault("step", []).append(sum(step_gflop(case, mask) for mask in reply["masks"]))
        memory = {"jax": ours.request(op="memory")["peak_rss_mib"], "torch": hf.request(op="memory")["peak_rss_mib"]}
    rows = []
    for key in per_round["jax"]:
        if case["kind"] == "forward":
            layers = int(key)
            gflop = [step_gflop(case | {"model": case["model"] | {"num_hidden_layers": layers}}, None) / 3] * args.rounds
            name, seconds = f"forward {layers}L", {k: per_round[k][key] for k in per_round}
            first = {k: setup[k]["first_s"][key] for k in setup}
        else:
            gflop = [g / args.steps for g in flops["step"]]
            name = case["name"]
            seconds = {k: [t / args.steps for t in per_round[k]["step"]] for k in per_round}
            first = {k: setup[k]["first_s"] for k in setup}
        row: Row = {"case": name, "rounds": args.rounds, "steps_per_round": args.steps,
                    "ceiling_gflops": statistics.median(ceilings[1:]), "ceiling_first_gflops": ceilings[0],
                    "gflop_per_step": statistics.mean(gflop), "compile_s": setup["jax"]["compile_s"],
                    "ratio_hf_over_ours": paired_ratio(seconds["torch"], seconds["jax"]),
                    "hf_optimizer": setup["torch"].get("optimizer")}
        for k in ("jax", "torch"):
            rate = statistics.median(g / s for g, s in zip(gflop, seconds[k]))
            share = statistics.median(100 * g / s / c for g, s, c in zip(gflop, seconds[k], ceilings[1:]))
            row |= {f"{k}_s": statistics.median(seconds[k]), f"{k}_gflops": rate, f"{k}_ceiling_pct": share,
                    f"{k}_first_s": first[k], f"{k}_rss_mib": memory[k]}
        row["versions"] = setup["jax"]["versions"] | setup["torch"]["versions"]
        row["device"] = setup["jax"]["device"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_candidates(case: Case, args: argparse.Namespace) -> list[str]:
    """Table rows: each candidate in its own worker, alternating step by step with one
    baseline worker that lives for the whole case."""
    rows = []
    with training_worker(args) as base:
        base.request(op="setup", case=case)
        for name in args.candidates:
            changes, flags, extra_env, what = CANDIDATES[name]
            with training_worker(args, flags=flags, extra_env=extra_env) as candidate:
                setup = candidate.request(op="setup", case=case | changes)
                ours, theirs = [], []
                for _ in range(args.rounds):
                    ours.append(base.request(op="steps", count=1)["times"][0])
                    theirs.append(candidate.request(op="steps", count=1)["times"][0])
            applied = " ".join([flags, *(f"{k}={v}" for k, v in extra_env.items())]).strip()
            row = (f"| {case['name']} | {name} | {what}{' `' + applied + '`' if applied else ''} | {statistics.median(ours):.3f} | "
                   f"{statistics.median(theirs):.3f} | **{paired_ratio(ours, theirs):.2f}** | {setup['compile_s']:.1f} |")
            print(row, f"(baseline s {[round(t, 3) for t in ours]}, candidate s {[round(t, 3) for t in theirs]})", flush=True)
            rows.append(row)
    return rows


def hf_precision(args: argparse.Namespace) -> str:
    """How HF's side computes, in the words of the section."""
    return "float32" if args.hf_dtype == "float32" else f"{args.hf_dtype} autocast (float32 weights and optimizer)"


def setting(args: argparse.Namespace, model: dict[str, int]) -> str:
    """The model, batch and length the cases ran with."""
    return (f"{args.model} shape ({model['num_hidden_layers']} layers, hidden {model['hidden_size']}, FFN "
            f"{model['intermediate_size']}, vocab {model['vocab_size']}), random weights, batch {args.batch}, length {args.length}")


def candidates_markdown(rows: list[str], args: argparse.Namespace, model: dict[str, int], machine: str,
                        load: tuple[float, float]) -> str:
    return "\n".join([
        f"Machine: {machine}; {args.threads} threads; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after. "
        f"{setting(args, model)}, {args.dtype} unless stated, {args.rounds} rounds of one baseline and one candidate step.",
        "", "| case | candidate | what | baseline s | candidate s | speedup (median of paired ratios) | candidate compile s |",
        "|---|---|---|---|---|---|---|", *rows,
    ])


def markdown(rows: list[Row], args: argparse.Namespace, model: dict[str, int], machine: str, load: tuple[float, float]) -> str:
    versions = rows[0]["versions"]
    optimizers = sorted({r["hf_optimizer"] for r in rows if r["hf_optimizer"]})
    ceilings = [r["ceiling_gflops"] for r in rows]
    lines = [
        f"Machine: {machine}; {args.threads} threads per framework; ours {args.dtype}, HF {hf_precision(args)}; 1-minute load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after. Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"{setting(args, model)}, all positions attended, dropout on in training. "
        f"Per case: a fresh JAX worker and a fresh HF worker, first step (JAX: compile + step), then {args.rounds} "
        f"alternating rounds of {args.steps} step(s) each, the same replacement masks on both sides. "
        f"Matmul ceiling: jitted 2048^3 float32 matmul in each case's JAX worker before each round, medians "
        f"{min(ceilings):.0f}-{max(ceilings):.0f} GFLOP/s over the cases; % ceiling = median over rounds of the round's "
        "GFLOP/s over that round's ceiling. GFLOP: model FLOPs (forward F per executed layer; backward F per layer above a "
        "trainable one + F per trainable layer; MLM head at the labelled 15% only, HF computes it at every position). "
        f"HF: transformers' BertFor... in train mode, `torch.optim.AdamW` ({', '.join(optimizers) or 'not run'}), "
        "clipping at global norm 1.0 over the trained parameters, the same freezing (Theseus: successors only, "
        "embeddings and heads frozen). HF/ours = median of paired round ratios of time (> 1: ours faster).",
        "",
        "| case | GFLOP/step | ours s | HF s | HF/ours | ours GFLOP/s | HF GFLOP/s | ours % ceiling | HF % ceiling | "
        "ours compile s | ours first step s | HF first step s | ours peak RSS MiB | HF peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['gflop_per_step']:.0f} | {r['jax_s']:.3f} | {r['torch_s']:.3f} | **{r['ratio_hf_over_ours']:.2f}** | "
            f"{r['jax_gflops']:.0f} | {r['torch_gflops']:.0f} | {r['jax_ceiling_pct']:.0f}% | {r['torch_ceiling_pct']:.0f}% | "
            f"{r['compile_s']:.1f} | {r['jax_first_s']:.2f} | {r['torch_first_s']:.2f} | {r['jax_rss_mib']:.0f} | {r['torch_rss_mib']:.0f} |"
        )
    forwards = {r["case"]: r for r in rows if r["case"].startswith("forward")}
    if len(forwards) == 2:
        big, small = sorted(forwards.values(), key=lambda r: -r["gflop_per_step"])
        lines += ["", f"Successor forward speedup ({small['case']} vs {big['case']}, medians of rounds): "
                  f"ours {big['jax_s'] / small['jax_s']:.2f}x, HF {big['torch_s'] / small['torch_s']:.2f}x."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick model (4 layers, hidden 256), batch 8, length 64, 2 rounds")
    parser.add_argument("--model", choices=sorted(MODELS), help="model shape, random weights (default bert-base; quick with --quick)")
    parser.add_argument("--layers", type=int, help="encoder layers (default: the model's)")
    parser.add_argument("--cases", type=comma_choices(CASES), help=f"comma-separated subset of {','.join(CASES)} "
                        "(default all; full-cls with --candidates)")
    parser.add_argument("--candidates", type=comma_choices(CANDIDATES),
                        help=f"time these against our own step instead of HF's, comma-separated of {','.join(CANDIDATES)}")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per case (default 3, quick 2)")
    parser.add_argument("--steps", type=int, default=1, help="steps (or forwards) per framework and round")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="our compute dtype")
    parser.add_argument("--hf-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="HF's: bfloat16 runs its forward under torch.autocast (Trainer's bf16=True)")
    parser.add_argument("--output", help="BENCHMARKS.md to write the section into")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--notes", type=existing_file, help="Markdown appended to the section")
    args = parser.parse_args(argv)
    args.model = args.model or ("quick" if args.quick else "bert-base")
    args.cases = args.cases or (["full-cls"] if args.candidates else list(CASES))
    if args.candidates and "forward" in args.cases:
        parser.error("--candidates times training steps: leave forward out of --cases")
    if any(c.startswith("theseus") for c in args.cases) and model_shape(args.model, args.layers)["num_hidden_layers"] < 2:
        parser.error("a Theseus case needs at least 2 layers")
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.batch = args.batch or (8 if args.quick else 16)
    args.length = args.length or (64 if args.quick else 128)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from benchmarks.report import machine_description, publish

    model = model_shape(args.model, args.layers)
    load_before = os.getloadavg()[0]
    if args.candidates:
        lines = [row for name in args.cases for row in run_candidates(make_case(name, args, model), args)]
        body = candidates_markdown(lines, args, model, machine_description(), (load_before, os.getloadavg()[0]))
        title = "Training step: candidate changes against the current step"
    else:
        rows = [row for name in args.cases for row in run_case(make_case(name, args, model), args)]
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        body = markdown(rows, args, model, machine_description(), (load_before, os.getloadavg()[0]))
        title = "Training step on CPU: JAX vs PyTorch and the matmul ceiling"
    publish(body, title + (" (--quick)" if args.quick else ""), "benchmarks.bench_training", argv, args.output, args.notes)


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.bench_training"))
