"""Training-step speed: JAX (ours) beside Hugging Face PyTorch, against the matmul ceiling.

Cases (bert-base shape, random weights, float32, batch 16, length 128 unless --quick):
full 12-layer fine-tuning (everything trainable, AdamW) and Theseus 12 -> 6 at p = 0.5
and p = 1 (successor layers trainable), each for classification and MLM, plus the
inference forward of 12 and 6 layers. Each case runs in two fresh long-lived worker
processes (ours and HF's, `benchmarks.training_workers`), driven alternately round by
round with the same replacement masks; reported: median seconds per step, model GFLOP/s,
percent of the jitted 2048^3 float32 matmul rate measured by the JAX worker of the same
case, the HF/ours ratio (median of paired rounds), compile time of the first step and
peak RSS of each worker.

    python -m benchmarks.bench_training --output BENCHMARKS.md
    python -m benchmarks.bench_training --quick          # small model, a sanity check
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
CASES = ("full-cls", "theseus-0.5-cls", "theseus-1-cls", "full-mlm", "theseus-0.5-mlm", "theseus-1-mlm", "forward")
Row = dict[str, Any]


def make_case(name: str, args: argparse.Namespace, model: dict[str, int] | None = None) -> Case:
    """The case `name` (one of CASES) with args' batch, length and dtype; the model defaults
    to bert-base (or the quick model under --quick)."""
    model = model or (QUICK_MODEL if args.quick else BERT_BASE)
    case: Case = {"name": name, "model": model, "batch": args.batch, "length": args.length, "dtype": args.dtype,
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


def run_case(case: Case, args: argparse.Namespace) -> list[Row]:
    env = thread_env(args.threads)
    worker_args = ["--threads", str(args.threads)]
    with Worker("benchmarks.training_workers", ["jax", *worker_args], env) as ours, \
            Worker("benchmarks.training_workers", ["torch", *worker_args], env) as hf:
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


def markdown(rows: list[Row], args: argparse.Namespace, machine: str, load: tuple[float, float]) -> str:
    shape = "quick model (4 layers, hidden 256)" if args.quick else "bert-base shape (12 layers, hidden 768), random weights"
    versions = rows[0]["versions"]
    optimizers = sorted({r["hf_optimizer"] for r in rows if r["hf_optimizer"]})
    ceilings = [r["ceiling_gflops"] for r in rows]
    lines = [
        f"Machine: {machine}; {args.threads} threads per framework; {args.dtype}; 1-minute load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after. Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"{shape}, batch {args.batch}, length {args.length}, all positions attended, dropout on in training. "
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
    parser.add_argument("--quick", action="store_true", help="4-layer hidden-256 model, batch 8, length 64, 2 rounds")
    parser.add_argument("--cases", type=comma_choices(CASES), default=list(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per case (default 3, quick 2)")
    parser.add_argument("--steps", type=int, default=1, help="steps (or forwards) per framework and round")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="our compute dtype")
    parser.add_argument("--output", help="BENCHMARKS.md to write the section into")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--notes", type=existing_file, help="Markdown appended to the section")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.batch = args.batch or (8 if args.quick else 16)
    args.length = args.length or (64 if args.quick else 128)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from benchmarks.report import machine_description, publish

    load_before = os.getloadavg()[0]
    rows = [row for name in args.cases for row in run_case(make_case(name, args), args)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    title = "Training step on CPU: JAX vs PyTorch and the matmul ceiling" + (" (--quick)" if args.quick else "")
    publish(markdown(rows, args, machine_description(), (load_before, os.getloadavg()[0])), title,
            "benchmarks.bench_training", argv, args.output, args.notes)


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.bench_training"))
