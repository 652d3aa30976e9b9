"""How much our BERT would gain if its Dense products ran on PyTorch's bfloat16 kernels
(oneDNN, which uses AMX where the CPU has it), everything else left to XLA in float32.

A feasibility probe for CPUs with AMX, where XLA:CPU's bfloat16 dots do not reach the matrix
units (BENCHMARKS.md, "HF in bfloat16 on an Intel Xeon with AMX"). Every product of
`models.dense` (the forward, the input gradient and the weight gradient) goes through
`jax.pure_callback` to `torch.matmul` on bfloat16 operands, with float32 results. Attention's
products, LayerNorm, softmax, the loss and AdamW stay in XLA, in float32. The plain model and
the routed one are compiled in one process and timed in alternation, the forward and then a
training step in each round. A host callback is no way to ship this (XLA's threads wait while
torch's run, and each result is copied back); it measures what a custom call into oneDNN could reach.

    python -m benchmarks.amx_dense_probe --model bert-base --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import warnings
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.bench_training import MODELS
from benchmarks.protocol import paired_ratio
from benchmarks.training_workers import Case, jax_case, jax_forwards
from theseus_jax import memory
from theseus_jax.errors import ArgumentParser, run_cli
from theseus_jax.models import dense

Array = jax.Array


def _torch_bfloat16_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [M, K] @ b [K, N] by torch on bfloat16 operands (their bits viewed, not copied), float32 out."""
    import torch

    def as_torch(x: np.ndarray) -> Any:
        with warnings.catch_warnings():  # XLA hands the callback read-only arrays; torch only reads them
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.asarray(x).view(np.int16)).view(torch.bfloat16)

    return (as_torch(a) @ as_torch(b)).float().numpy()


def torch_dot(a: Array, b: Array) -> Array:
    """a [M, K] @ b [K, N] on PyTorch's bfloat16 kernels, float32 out."""
    out = jax.ShapeDtypeStruct((a.shape[0], b.shape[1]), jnp.float32)
    return jax.pure_callback(_torch_bfloat16_matmul, out, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))


@jax.custom_vjp
def torch_matmul(x: Array, kernel: Array) -> Array:
    """`dense._matmul`'s product (x [..., in] @ kernel [in, out]) with all three dots on torch."""
    return torch_dot(x.reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], kernel.shape[1]).astype(x.dtype)


def _torch_matmul_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return torch_matmul(x, kernel), (x, kernel)


def _torch_matmul_bwd(residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    rows, d_rows = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    dx = torch_dot(d_rows, kernel.T).reshape(x.shape)
    return dx.astype(x.dtype), torch_dot(rows.T, d_rows).astype(kernel.dtype)


torch_matmul.defvjp(_torch_matmul_fwd, _torch_matmul_bwd)


@contextlib.contextmanager
def dense_products(matmul: Callable[[Array, Array], Array]) -> Iterator[None]:
    """Traces the model's Dense layers with `matmul` in place of `dense._matmul`."""
    original = dense._matmul
    dense._matmul = matmul
    try:
        yield
    finally:
        dense._matmul = original


def compile_sides(case: Case) -> dict[str, tuple[Callable[[], float], Callable[[], float]]]:
    """Per side ("float32", "torch": Dense products on torch): (timed forward, its `logits()` beside
    it; timed training step), compiled by the JAX workers `bench_training` times, the torch side
    under the swap."""
    layers = case["model"]["num_hidden_layers"]
    sides = {}
    for name in ("float32", "torch"):
        with dense_products(torch_matmul) if name == "torch" else contextlib.nullcontext():
            step, _, _ = jax_case(case)
            forwards, _ = jax_forwards(case | {"layers": [layers]})
        sides[name] = (forwards[layers], step)
    return sides


def measure(model_name: str, layers: int | None, batch_size: int, length: int, rounds: int) -> dict[str, Any]:
    """Per side: forward and step seconds per round (the first, warm-up round dropped from the
    medians), and the largest logit difference between the two."""
    fields = MODELS[model_name] | ({"num_hidden_layers": layers} if layers else {})
    case = {"kind": "train", "objective": "classification", "model": fields, "batch": batch_size,
            "length": length, "dtype": "float32"}
    sides = compile_sides(case)
    logits = {name: np.asarray(forward.logits()) for name, (forward, _) in sides.items()}  # type: ignore[attr-defined]
    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "step": []} for name in sides}
    for _ in range(rounds + 1):
        for name, (forward, step) in sides.items():
            times[name]["forward"].append(forward())
            times[name]["step"].append(step())
    result: dict[str, Any] = {"model": model_name, "layers": fields["num_hidden_layers"], "batch": batch_size,
                              "length": length, "rounds": rounds, "times": times,
                              "max_logit_difference": float(np.abs(logits["torch"] - logits["float32"]).max()),
                              "max_logit": float(np.abs(logits["float32"]).max())}
    for kind in ("forward", "step"):
        ours, routed = times["float32"][kind][1:], times["torch"][kind][1:]
        result[kind] = {"float32_s": statistics.median(ours), "torch_s": statistics.median(routed),
                        "speedup": paired_ratio(ours, routed)}
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="bert-base", help="model shape, random weights")
    parser.add_argument("--layers", type=int, help="encoder layers (default: the model's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up round")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch's threads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    memory.configure_memory()  # as launch.py and the benchmarks' workers do, before JAX's first computation
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    result = measure(args.model, args.layers, args.batch, args.length, args.rounds)
    result["load_before_after"] = [load, os.getloadavg()[0]]
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.amx_dense_probe"))
