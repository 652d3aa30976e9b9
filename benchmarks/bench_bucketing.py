"""Tokens per second of real GermEval 2018 text: length bucketing versus padding to 512.

A jitted forward pass of the packaged all-MiniLM-L6-v2 (6 layers, hidden 384) with a
classification head, batch 16, over the same seeded sample of training tweets in both
modes. "Tokens" are real (non-pad) tokens. Every batch shape is compiled before timing;
the modes alternate round by round and the speed-up is the median of paired ratios.

    python -m benchmarks.bench_bucketing --output BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.arguments import existing_file
from benchmarks.report import machine_description, write_section
from theseus_jax.convert import load_hf_checkpoint
from theseus_jax.errors import ArgumentParser, run_cli
from theseus_jax.data.batching import BUCKETS, BatchLoader
from theseus_jax.data.encoding import encode
from theseus_jax.data.germeval import read_germeval
from theseus_jax.models.bert import BertForSequenceClassification
from theseus_jax.tokenization import load_tokenizer, packaged_model_dir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "germeval2018" / "germeval2018.training.txt"
BATCH_SIZE = 16


def padding_efficiency(loader: BatchLoader) -> tuple[float, int]:
    """Share of real tokens among all positions over one epoch, and the number of distinct shapes."""
    real = total = 0
    shapes = set()
    for batch in loader.batches(0):
        real += int(batch["attention_mask"].sum())
        total += batch["input_ids"].size
        shapes.add(batch["input_ids"].shape)
    return real / total, len(shapes)


def main(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()[0]
    tokenizer = load_tokenizer(packaged_model_dir())
    examples = read_germeval(args.data)
    labels = np.array([e.label for e in examples], np.int32)
    encoded = encode([e.text for e in examples], tokenizer, 512)
    config, params = load_hf_checkpoint(packaged_model_dir(), head="classification", num_labels=2)
    model = BertForSequenceClassification(config)
    forward = jax.jit(lambda p, b: model.apply({"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"]))

    loaders = {
        name: BatchLoader(encoded, labels, BATCH_SIZE, tokenizer.pad_token_id, buckets, shuffle=True, seed=0)
        for name, buckets in (("bucketed", BUCKETS), ("padded to 512", (512,)))
    }
    efficiency = {name: padding_efficiency(loader) for name, loader in loaders.items()}

    # The same sample of tweets in both modes: a seeded subset, batched each way.
    keep = np.sort(np.random.default_rng(0).permutation(len(examples))[: args.examples])
    sample = type(encoded)([encoded.ids[i] for i in keep], encoded.full_lengths[keep], 512)
    runs = {
        name: [
            {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            for b in BatchLoader(sample, labels[keep], BATCH_SIZE, tokenizer.pad_token_id, loader.buckets, seed=0).batches(0)
        ]
        for name, loader in loaders.items()
    }
    real_tokens = {name: sum(int(b["attention_mask"].sum()) for b in batches) for name, batches in runs.items()}
    assert len(set(real_tokens.values())) == 1, real_tokens
    compiled = set()
    for batches in runs.values():  # compile every shape outside the timed loop
        for b in batches:
            if b["input_ids"].shape not in compiled:
                compiled.add(b["input_ids"].shape)
                forward(params, b).block_until_ready()

    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, batches in runs.items():
            start = time.perf_counter()
            for b in batches:
                forward(params, b).block_until_ready()
            seconds[name].append(time.perf_counter() - start)
    tokens = next(iter(real_tokens.values()))
    speedup = statistics.median(p / b for b, p in zip(seconds["bucketed"], seconds["padded to 512"]))
    rows = [
        f"| {name} | {len(runs[name])} | {statistics.median(ts):.2f} | {tokens / statistics.median(ts):,.0f} "
        f"| {efficiency[name][0]:.1%} | {efficiency[name][1]} |"
        for name, ts in seconds.items()
    ]
    table = "\n".join(
        [
            f"Jitted forward pass (inference) of the packaged all-MiniLM-L6-v2 ({config.num_hidden_layers} layers, "
            f"hidden {config.hidden_size}) with a classification head, float32, batch {BATCH_SIZE}, on a seeded sample "
            f"of {len(keep)} GermEval 2018 training tweets ({tokens:,} real tokens, English uncased WordPiece), "
            f"{args.rounds} alternating rounds, compilation excluded. Real tokens exclude padding. Padding efficiency "
            f"and shapes are over the whole training file ({len(examples):,} tweets, one shuffled epoch).",
            f"Machine: {machine_description()}; 1-minute load average {load_before:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end (other work on the cores slows both modes and skews the ratio).",
            "",
            "| batching | batches | median s per pass | real tokens/s | real share of positions (full file) | shapes (full file) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Bucketing is {speedup:.1f}x faster than padding to 512 (median of paired round ratios).",
        ]
    )
    print(table)
    if args.output:
        command = f"python -m benchmarks.bench_bucketing --examples {args.examples} --rounds {args.rounds} --output {args.output}"
        write_section(args.output, "Data: bucketing vs padding to 512", command, table)


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=existing_file, default=DATA, help="GermEval 2018 training file")
    parser.add_argument("--examples", type=int, default=320, help="tweets timed in each mode (20 batches)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None, help="Markdown file to write the section into")
    args = parser.parse_args()
    sys.exit(run_cli(lambda: main(args), "python -m benchmarks.bench_bucketing"))
