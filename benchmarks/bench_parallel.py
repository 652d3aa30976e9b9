"""Throughput of the data-parallel compression step: float32 vs bfloat16 compute.

bert-base-shaped 12 -> 6 model (random weights), classification, p = 0.5 (a new mask
every step), successor-only trainable, global batch split over a mesh of all devices.
Both dtypes are compiled first, then timed interleaved round by round.

Model FLOPs of a step are the matmul FLOPs (attention included) of the path it runs,
taken in expectation over the replacement draws: forward, weight gradients of the
trainable successor layers, and input gradients of every layer with a trainable layer
below it (frozen weights get no weight gradient; XLA drops it). Model FLOP utilisation
(MFU) divides by the devices' peak: `--peak-tflops`, else the dense bfloat16 spec of
known GPUs, else (CPU) a jitted matmul measured here in the step's dtype.

    python -m benchmarks.bench_parallel --output BENCHMARKS.md               # GPU: seq 512, batch 16
    python -m benchmarks.bench_parallel --layers 4 --successor-layers 2 --hidden 128 --seq-len 64 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.protocol import encoder_gflops, matmul_ceiling_gflops
from benchmarks.report import machine_description, write_section
from theseus_jax.compression import schedules, theseus
from theseus_jax.errors import ArgumentParser
from theseus_jax.models.bert import BertConfig, BertForSequenceClassification
from theseus_jax.training import optimizer, parallel, steps

# Dense bfloat16 tensor-core peaks per device (spec sheets, TFLOP/s).
PEAK_TFLOPS = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100-SXM4-40GB": 312.0}


def layer_flops(config: BertConfig, seq_len: int) -> float:
    """Forward matmul FLOPs of one layer for one sequence."""
    return 1e9 * encoder_gflops(1, config.hidden_size, config.intermediate_size, seq_len)


def expected_step_flops(config: BertConfig, n_successor: int, p: float, seq_len: int, batch: int) -> float:
    """Model FLOPs of one successor-only compression step, in expectation over the draws.

    Module i runs its successor with probability p (forward and weight gradient, plus its
    input gradient if a successor below it trains) or its r predecessor layers (forward,
    plus input gradients if a successor below trains).
    """
    r = theseus.module_size(config.num_hidden_layers, n_successor)
    total = 0.0
    for i in range(n_successor):
        below = 1.0 - (1.0 - p) ** i  # some module below runs a trainable successor
        total += p * (2.0 + below) + (1.0 - p) * r * (1.0 + below)
    return total * layer_flops(config, seq_len) * batch


def build_step(config: BertConfig, n_successor: int, p: float, batch: dict, mesh) -> Callable[[], None]:
    """One jitted compression step on its own donated, replicated state."""
    predecessor = BertForSequenceClassification(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    params = theseus.init_theseus_params(predecessor, config, n_successor)
    tx, mask = optimizer.make_optimizer(params, "successor", 2e-5)
    model = theseus.theseus_model(config, "classification", n_successor)
    compression = steps.Compression(schedules.constant_schedule(p), n_successor)
    jitted = jax.jit(steps.make_train_step(model, tx, mask, "classification", compression), donate_argnums=(0,))
    state = {"s": parallel.replicate(steps.create_train_state(params, tx), mesh)}
    sharded = parallel.shard_batch(batch, mesh)
    rng = jax.random.key(1)

    def run() -> None:
        state["s"], metrics = jitted(state["s"], sharded, rng)
        jax.block_until_ready(metrics["loss"])

    run()  # compile + first step
    return run


def main() -> None:
    mesh = parallel.make_mesh(args.devices)
    base = BertConfig(
        num_hidden_layers=args.layers,
        hidden_size=args.hidden,
        num_attention_heads=max(1, args.hidden // 64),
        intermediate_size=4 * args.hidden,
        max_position_embeddings=max(512, args.seq_len),
    )
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(1000, base.vocab_size, (args.batch_size, args.seq_len)).astype(np.int32),
        "attention_mask": np.ones((args.batch_size, args.seq_len), np.int32),
        "token_type_ids": np.zeros((args.batch_size, args.seq_len), np.int32),
        "labels": rng.integers(0, 2, args.batch_size).astype(np.int32),
        "example_mask": np.ones(args.batch_size, np.float32),
    }
    dtypes = ("float32", "bfloat16")
    runs = {dtype: build_step(base.replace(dtype=dtype), args.successor_layers, args.p, batch, mesh) for dtype in dtypes}
    times: dict[str, list[float]] = {dtype: [] for dtype in dtypes}
    for _ in range(args.rounds):
        for dtype, run in runs.items():
            start = time.perf_counter()
            run()
            times[dtype].append(time.perf_counter() - start)

    flops = expected_step_flops(base, args.successor_layers, args.p, args.seq_len, args.batch_size)
    kind = mesh.devices.flat[0].device_kind
    rows = []
    for dtype, ts in times.items():
        if args.peak_tflops:
            peak, source = args.peak_tflops * 1e12, f"{args.peak_tflops:g} TFLOP/s given"
        elif kind in PEAK_TFLOPS:
            peak, source = PEAK_TFLOPS[kind] * 1e12, f"{PEAK_TFLOPS[kind]:g} TFLOP/s bf16 spec"
        else:
            peak = 1e9 * matmul_ceiling_gflops(dtype=dtype)
            source = f"{peak / 1e9:.0f} GFLOP/s measured {dtype} matmul"
        mean = sum(ts) / len(ts)  # the mean covers the mask draws that the FLOP count expects
        mfu = flops / mean / (peak * mesh.size)
        rows.append(
            f"| {dtype} | {statistics.median(ts):.3f} | {mean:.3f} | {args.batch_size / mean:.2f} "
            f"| {flops / mean / 1e9:,.1f} | {100 * mfu:.1f}% ({source} x {mesh.size}) |"
        )
    ratio = statistics.median(b / f for b, f in zip(times["bfloat16"], times["float32"]))
    shape = f"hidden {args.hidden}, {args.layers} -> {args.successor_layers} layers"
    table = "\n".join(
        [
            f"{shape}, classification, global batch {args.batch_size}, seq {args.seq_len}, p={args.p}, successor-only "
            f"trainable, data-parallel over {mesh.size} device(s), {args.rounds} interleaved rounds. "
            f"Expected model FLOPs per step: {flops / 1e9:,.1f} GFLOP.",
            f"Machine: {machine_description()}.",
            "",
            "| compute dtype | median s/step | mean s/step | sequences/s | model GFLOP/s | MFU (of peak) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"bfloat16 / float32 step time (median of paired rounds): {ratio:.2f}.",
        ]
    )
    print(table)
    if args.output:
        flags = [a for a in sys.argv[1:] if not a.startswith("--note") and a != args.note]
        command = " ".join(["python -m benchmarks.bench_parallel", *flags])
        body = table if not args.note else f"{args.note.strip()}\n\n{table}"
        write_section(args.output, "Data-parallel compression step: bfloat16 vs float32", command, body)


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--successor-layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=768, help="hidden size (heads of 64, FFN 4x)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch, split over the devices")
    parser.add_argument("--p", type=float, default=0.5, help="replacement rate")
    parser.add_argument("--devices", type=int, default=0, help="mesh size (0: all devices)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="per-device peak for MFU")
    parser.add_argument("--note", default="", help="text placed above the table in --output")
    parser.add_argument("--output", default=None, help="Markdown file to write the section into")
    args = parser.parse_args()
    main()
