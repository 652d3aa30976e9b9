"""Time the Theseus MLM step with the head's rows laid out per row or per micro-batch.

The MLM head (vocabulary projection and softmax) runs only where tokens are labelled. Per
row, every row gets as many slots as the batch's fullest row (rounded up to 16, the layout
before flat positions); per micro-batch (`data.masking.gather_masked_positions`), the
labelled tokens of all rows share the slots, so the head sees about the mean count per row.
With short texts of uneven length and a large vocabulary (multilingual-e5-small: 250k
pieces) the head dominates the step. Real batches of the configured training text, both
layouts of the same masks, timed alternately in one process (medians, median paired ratio).

    python -m benchmarks.bench_mlm_positions --model ~/.cache/theseus-jax/e5-small-hf --output BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Sequence

import numpy as np

from benchmarks.arguments import existing_file
from benchmarks.protocol import paired_ratio
from benchmarks.report import machine_description, publish
from theseus_jax.errors import ArgumentParser, run_cli

IGNORE = -100


def per_row_layout(batch: dict[str, np.ndarray], multiple: int = 16) -> dict[str, np.ndarray]:
    """The same masks with each row's labelled tokens in its own slots (flat indices)."""
    rows, length = batch["input_ids"].shape
    labels = np.full(rows * length, IGNORE, np.int32)
    real = batch["labels"] != IGNORE
    labels[batch["masked_positions"][real]] = batch["labels"][real]
    labels = labels.reshape(rows, length)
    index = [np.flatnonzero(row != IGNORE) for row in labels]
    width = min(length, max(multiple, -(-max(len(i) for i in index) // multiple) * multiple))
    positions, gathered = np.zeros((rows, width), np.int32), np.full((rows, width), IGNORE, np.int32)
    for r, i in enumerate(index):
        positions[r, : len(i)], gathered[r, : len(i)] = r * length + i, labels[r, i]
    return {**batch, "masked_positions": positions, "labels": gathered}


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub ID (the predecessor)")
    parser.add_argument("--config", type=existing_file, default="configs/germeval_e5.py", help="config whose lm stage gives data, batch and buckets")
    parser.add_argument("--batches", type=int, default=4, help="real training batches timed (each shape compiles once)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", help="BENCHMARKS.md to write the section into")
    parser.add_argument("--notes", type=existing_file, help="Markdown appended to the section")
    args = parser.parse_args(argv)

    import importlib.util

    import jax

    from theseus_jax.compression import schedules, theseus
    from theseus_jax.experiments import datasets, pipelines
    from theseus_jax.tokenization import load_tokenizer
    from theseus_jax.training import optimizer, steps

    spec = importlib.util.spec_from_file_location("bench_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.model.path = args.model
    source = pipelines.load_model(cfg, "mlm")
    loaders = datasets.mlm_loaders(cfg, load_tokenizer(source.tokenizer_dir, cfg.lm.max_length))
    n = cfg.compression.num_successor_layers
    params = theseus.init_theseus_params(source.params, source.config, n)
    tx, mask = optimizer.make_optimizer(params, cfg.compression.trainable, cfg.lm.learning_rate)
    step = jax.jit(steps.make_train_step(theseus.theseus_model(source.config, "mlm", n), tx, mask, "mlm",
                                         steps.Compression(schedules.constant_schedule(0.5), n)))
    state = steps.create_train_state(params, tx)
    batches = [b for _, b in zip(range(args.batches), loaders.train.batches(0))]
    layouts: dict[str, list[dict[str, Any]]] = {"per row": [per_row_layout(b) for b in batches], "per micro-batch": batches}
    rows = {name: [b["labels"].size for b in bs] for name, bs in layouts.items()}
    labelled = [int((b["labels"] != IGNORE).sum()) for b in batches]
    key = jax.random.key(0)

    def run(batch: dict[str, Any]) -> float:
        start = time.perf_counter()
        jax.block_until_ready(step(state, batch, key)[1])
        return time.perf_counter() - start

    compile_start = time.perf_counter()
    for bs in layouts.values():
        for b in bs:
            run(b)
    compile_s = time.perf_counter() - compile_start
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(args.rounds):
        for name, bs in layouts.items():
            times[name].append(sum(run(b) for b in bs) / len(bs))
    old, new = times["per row"], times["per micro-batch"]
    body = "\n".join([
        f"Machine: {machine_description()}; load average {os.getloadavg()[0]:.1f} at the end. Model `{args.model}` "
        f"({source.config.num_hidden_layers} layers, vocabulary {source.config.vocab_size:,}), Theseus MLM step "
        f"({n} successors, p = 0.5, trainable `{cfg.compression.trainable}`), batch {cfg.lm.batch_size}, the first {len(batches)} "
        f"training batches of `{cfg.lm.data.train_path}` (lengths {[b['input_ids'].shape[1] for b in batches]}, "
        f"labelled tokens {labelled}); {args.rounds} rounds after warm-up/compilation ({compile_s:.0f} s).",
        "",
        "| layout | head rows per batch | s per step (median) |",
        "|---|---|---|",
        *[f"| {name} | {statistics.mean(rows[name]):.0f} | {statistics.median(times[name]):.2f} |" for name in layouts],
        "",
        f"Per micro-batch vs per row: **{paired_ratio(old, new):.2f}x** faster (median paired ratio).",
    ])
    publish(body, "MLM step: head rows per row vs per micro-batch", "benchmarks.bench_mlm_positions", argv, args.output, args.notes)


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.bench_mlm_positions"))
