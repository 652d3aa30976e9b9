"""Where the training step spends its time, and what each candidate change buys.

First the full fine-tuning step (bert-base shape unless --quick, classification) is split
into forward, forward + backward and the optimizer update, each jitted on its own and
timed interleaved with whole steps. Then every candidate runs in its own JAX worker,
alternating step by step with a baseline worker that lives for the whole run; the
speedup is the median of paired baseline/candidate ratios (> 1: the candidate is faster).

    python -m benchmarks.bench_training_candidates --output BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any, Sequence

from benchmarks.arguments import existing_file
from benchmarks.bench_training import BERT_BASE, E5_SMALL, make_case
from benchmarks.protocol import Worker, paired_ratio, thread_env
from theseus_jax.errors import ArgumentParser, run_cli

NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="

# name -> (case changes, extra XLA flags, extra environment, what it is)
CANDIDATES: dict[str, tuple[dict[str, Any], str, dict[str, str], str]] = {
    "bfloat16": ({"dtype": "bfloat16"}, "", {}, "bfloat16 matmuls, float32 weights, LayerNorm/softmax/loss (`BertConfig.dtype`)"),
    "fused_qkv": ({"variant": "fused_qkv"}, "", {}, "one [H, 3H] QKV matmul, kernels concatenated at compute time"),
    "head_major_attention": ({"variant": "head_major_attention"}, "", {}, "Q/K/V transposed to [B, heads, L, d] before the attention matmuls"),
    "no_donation": ({"donate": False}, "", {}, "train state not donated (the trainer donates it)"),
    "xla_xnnpack": ({}, "--xla_cpu_use_xnnpack=true", {}, "XLA flag"),
    "xla_onednn": ({}, "--xla_cpu_use_onednn=true", {}, "XLA flag"),
    "xla_vector_width_512": ({}, "--xla_cpu_prefer_vector_width=512", {}, "XLA flag"),
    "xla_no_ynn": ({}, NO_YNN, {}, "XLA flag: dots left to XLA's own (Eigen) kernels instead of YNNPACK fusions"),
    "xla_no_ynn_onednn": ({}, f"{NO_YNN} --xla_cpu_use_onednn=true", {}, "XLA flags: no YNNPACK fusions, oneDNN on"),
    "xla_ynn_dot_only": ({}, "--xla_cpu_experimental_ynn_fusion_type=dot", {}, "XLA flag: YNNPACK fusions for dots only (no elementwise or reduce fusions)"),
    "xla_onednn_custom_call": ({}, "--xla_cpu_experimental_onednn_custom_call=true", {}, "XLA flag: oneDNN custom-call thunks"),
    "xla_xnn_graph_greedy": ({}, "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", {}, "XLA flag: greedy XNNPACK subgraph fusion"),
    "xla_serial_scheduler": ({}, "--xla_cpu_enable_concurrency_optimized_scheduler=false", {}, "XLA flag: no concurrent thunks"),
    "rbg_prng": ({}, "", {"JAX_DEFAULT_PRNG_IMPL": "rbg"}, "every PRNG key (dropout, replacement masks, init) from XLA's RngBitGenerator (`jax_default_prng_impl=rbg`) instead of threefry"),
    "no_dropout": ({"dropout": False}, "", {}, "diagnostic only: dropout off (deterministic step)"),
    "flax_dropout": ({"variant": "flax_dropout"}, "", {}, "dropout as before issue 22: `nn.Dropout`, a threefry float uniform per element, p exact"),
    "frozen_word_embeddings": ({"trainable": "all_but_word_embeddings"}, "", {}, "word embeddings frozen (optimizer preset `all_but_word_embeddings`: no table gradient, no AdamW over the table)"),
}
MODELS = {"bert-base": BERT_BASE, "e5-small": E5_SMALL}


def worker(args: argparse.Namespace, flags: str = "", extra_env: dict[str, str] | None = None) -> Worker:
    env = thread_env(args.threads) | (extra_env or {})
    env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {flags}".strip()
    return Worker("benchmarks.training_workers", ["jax", "--threads", str(args.threads)], env)


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4-layer hidden-256 model, batch 8, length 64")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12, help="encoder layers")
    parser.add_argument("--model", default="bert-base", choices=sorted(MODELS), help="model shape (random weights)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--no-phases", action="store_true", help="skip the forward/backward/update split")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--output", help="BENCHMARKS.md to write the section into")
    parser.add_argument("--notes", type=existing_file, help="Markdown appended to the section")
    args = parser.parse_args(argv)
    args.dtype = "float32"
    if args.quick:
        args.batch, args.length = 8, 64
    from benchmarks.report import machine_description, publish

    base_case = make_case("full-cls", args, None if args.quick else MODELS[args.model])
    base_case["model"] = base_case["model"] | {"num_hidden_layers": args.layers if not args.quick else 4}
    load_before = os.getloadavg()[0]
    lines = []
    with worker(args) as base:
        base.request(op="setup", case=base_case)
        if not args.no_phases:
            times = base.request(op="phases", count=args.rounds)["times"]
            step = statistics.median(times["step"])
            lines += ["| part | median ms | share of the step |", "|---|---|---|"]
            lines += [f"| {name} | {1e3 * statistics.median(ts):.0f} | {100 * statistics.median(ts) / step:.0f}% |"
                      for name, ts in times.items()] + [""]
        lines += ["| candidate | what | baseline s | candidate s | speedup (median of paired ratios) | candidate compile s |",
                  "|---|---|---|---|---|---|"]
        for name in args.candidates.split(","):
            changes, flags, extra_env, what = CANDIDATES[name]
            with worker(args, flags, extra_env) as candidate:
                setup = candidate.request(op="setup", case=base_case | changes)
                ours, theirs = [], []
                for _ in range(args.rounds):
                    ours.append(base.request(op="steps", count=1)["times"][0])
                    theirs.append(candidate.request(op="steps", count=1)["times"][0])
            setting = " ".join([flags, *(f"{k}={v}" for k, v in extra_env.items())]).strip()
            row = (f"| {name} | {what}{' `' + setting + '`' if setting else ''} | {statistics.median(ours):.3f} | "
                   f"{statistics.median(theirs):.3f} | **{paired_ratio(ours, theirs):.2f}** | {setup['compile_s']:.1f} |")
            print(row, f"(baseline s {[round(t, 3) for t in ours]}, candidate s {[round(t, 3) for t in theirs]})", flush=True)
            lines.append(row)
    m = base_case["model"]
    shape = (f"{'quick' if args.quick else args.model} shape (hidden {m['hidden_size']}, FFN {m['intermediate_size']}, "
             f"vocab {m['vocab_size']}), {m['num_hidden_layers']} layers, batch {args.batch}, length {args.length}")
    head = (f"Machine: {machine_description()}; {args.threads} threads; 1-minute load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after. Full fine-tuning step (everything trainable, AdamW, classification), {shape}, "
            f"float32 unless stated, {args.rounds} rounds. Parts: each jitted alone, so forward + backward + update "
            "can exceed the fused step.")
    publish("\n".join([head, "", *lines]), "Training step: where the time goes, candidates kept or not",
            "benchmarks.bench_training_candidates", argv, args.output, args.notes)


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.bench_training_candidates"))
