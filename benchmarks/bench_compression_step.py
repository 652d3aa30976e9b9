"""Time the Theseus compression step against full fine-tuning and a both-branches select.

bert-base-shaped 12 -> 6 model (random weights), classification objective, batch 16,
seq 128, float32. All variants are compiled first, then run interleaved round by round
(A, B, C, ... A, B, C, ...) so that machine drift hits all of them alike; medians and
median paired ratios are reported.

    python -m benchmarks.bench_compression_step --rounds 8 --output BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.report import machine_description, write_section
from theseus_jax.compression import schedules, theseus
from theseus_jax.errors import ArgumentParser
from theseus_jax.models.bert import BertConfig, BertForSequenceClassification
from theseus_jax.training import optimizer, steps


def _batch(batch_size: int, length: int, vocab: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": jnp.asarray(rng.integers(1000, vocab, (batch_size, length)), jnp.int32),
        "attention_mask": jnp.ones((batch_size, length), jnp.int32),
        "token_type_ids": jnp.zeros((batch_size, length), jnp.int32),
        "labels": jnp.asarray(rng.integers(0, 2, batch_size), jnp.int32),
        "example_mask": jnp.ones(batch_size, jnp.float32),
    }


def build_variants(
    config: BertConfig, n_successor: int, rates: list[float], seq_len: int
) -> dict[str, Callable[[], None]]:
    """Each variant is a closure running one jitted step on its own (donated) state."""
    model = BertForSequenceClassification(config)
    pred = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    batch = _batch(16, seq_len, config.vocab_size)
    rng = jax.random.key(1)
    variants: dict[str, Callable[[], None]] = {}

    def add(name: str, step_fn, params, tx) -> None:
        # Own copies: the step donates its state.
        state = {"s": steps.create_train_state(jax.tree.map(jnp.array, params), tx)}
        jitted = jax.jit(step_fn, donate_argnums=(0,))

        def run() -> None:
            state["s"], metrics = jitted(state["s"], batch, rng)
            jax.block_until_ready(metrics["loss"])

        run()  # compile + first step
        variants[name] = run

    tx, mask = optimizer.make_optimizer(pred, "all", 2e-5)
    add(f"full {config.num_hidden_layers}L fine-tuning", steps.make_train_step(model, tx, mask, "classification"), pred, tx)
    theseus_params = theseus.init_theseus_params(pred, config, n_successor)
    for branch, branch_rates in (("cond", rates), ("select", [0.5])):
        tmodel = theseus.theseus_model(config, "classification", n_successor, branch=branch)
        for p in branch_rates:
            tx, mask = optimizer.make_optimizer(theseus_params, "successor", 2e-5)
            compression = steps.Compression(schedules.constant_schedule(p), n_successor)
            step = steps.make_train_step(tmodel, tx, mask, "classification", compression)
            add(f"theseus {branch} p={p}", step, theseus_params, tx)
    return variants


def main() -> None:
    config = BertConfig(num_hidden_layers=args.layers)
    variants = build_variants(config, args.successor_layers, [0.0, 0.25, 0.5, 0.75, 1.0], args.seq_len)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    full = next(name for name in variants if name.startswith("full"))
    rows = []
    for name, ts in times.items():
        vs_full = statistics.median(t / f for t, f in zip(ts, times[full]))
        vs_select = statistics.median(t / s for t, s in zip(ts, times["theseus select p=0.5"]))
        rows.append(f"| {name} | {statistics.median(ts):.3f} | {np.std(ts):.3f} | {vs_full:.2f} | {vs_select:.2f} |")
    table = "\n".join(
        [
            f"bert-base shape {args.layers} -> {args.successor_layers}, classification, batch 16, seq {args.seq_len}, "
            f"float32, successor-only trainable, {args.rounds} interleaved rounds (p draws a new mask every step).",
            f"Machine: {machine_description()}.",
            "",
            "| step | median s | std s | ratio to full (median of pairs) | ratio to select p=0.5 |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.output:
        command = f"python -m benchmarks.bench_compression_step --rounds {args.rounds} --output {args.output}"
        write_section(args.output, "Compression step: cond vs full fine-tuning vs select", command, table)


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--successor-layers", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--output", default=None, help="Markdown file to write the section into")
    args = parser.parse_args()
    main()
