"""GEMMs of a BERT layer: XLA vs PyTorch, shape by shape.

A training step of one encoder layer runs three products per Dense weight [in, out] over
the T tokens of the batch: forward x.W ([T, in] . [in, out]), the input gradient
dY.W^T ([T, out] . [in, out]^T) and the weight gradient X^T.dY ([T, in]^T . [T, out]);
the weights are Q, K, V and the attention output (H x H), the FFN up (H x F) and down
(F x H) projections. Each product, plus a square S^3 matmul (the machine's ceiling, as in
`protocol.matmul_ceiling_gflops`), is jitted alone in JAX (one worker process per XLA-flag
variant) and run with torch.matmul on transposed views in a PyTorch worker, all pinned to
the same thread count. Rounds alternate the workers (order rotated each round); a round
times every product `--reps` times and keeps the median; reported: the median over rounds
as GFLOP/s, and per JAX variant the torch/JAX speed ratio (median of paired round ratios,
> 1: torch faster). The last row weighs each product by how often one layer's step runs it.

    python -m benchmarks.bench_dots --rounds 5 --output BENCHMARKS.md
    python -m benchmarks.bench_dots --hidden 64 --ffn 256 --tokens 128 --square 128 --rounds 2   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
from typing import Any, Callable, Sequence

from benchmarks.arguments import comma_choices, existing_file
from benchmarks.bench_training_candidates import NO_YNN
from benchmarks.protocol import Worker, paired_ratio, serve, thread_env, time_calls
from theseus_jax.errors import ArgumentParser, run_cli

VARIANTS = {"default": "", "no-ynn": NO_YNN, "onednn": "--xla_cpu_use_onednn=true"}


@dataclasses.dataclass(frozen=True)
class Gemm:
    """lhs . rhs contracting lhs dim `contracting[0]` with rhs dim `contracting[1]` (2-D)."""

    name: str
    role: str
    lhs: tuple[int, int]
    rhs: tuple[int, int]
    contracting: tuple[int, int]
    per_layer: int  # times one layer's training step runs it (0: not part of the layer)

    @property
    def gflop(self) -> float:
        left, right = self.contracting
        return 2 * self.lhs[1 - left] * self.lhs[left] * self.rhs[1 - right] / 1e9


def layer_gemms(hidden: int, ffn: int, tokens: int, square: int) -> list[Gemm]:
    """The products of one layer's training step, three per weight, and the square ceiling."""
    gemms = []
    for (n_in, n_out), count in (((hidden, hidden), 4), ((hidden, ffn), 1), ((ffn, hidden), 1)):
        weight = f"W {n_in}x{n_out}"
        gemms += [
            Gemm(f"x.W, {weight}", "forward", (tokens, n_in), (n_in, n_out), (1, 0), count),
            Gemm(f"dY.W^T, {weight}", "dX", (tokens, n_out), (n_in, n_out), (1, 1), count),
            Gemm(f"X^T.dY, {weight}", "dW", (tokens, n_in), (tokens, n_out), (0, 0), count),
        ]
    return gemms + [Gemm(f"{square}^3 matmul", "ceiling", (square, square), (square, square), (1, 0), 0)]


# --- workers ---------------------------------------------------------------------------------------


def jax_gemm(gemm: Gemm) -> Callable[[], Any]:
    """The product jitted alone (`lax.dot_general` with its contracting dims), on random inputs."""
    import jax

    x = jax.random.normal(jax.random.key(0), gemm.lhs)
    y = jax.random.normal(jax.random.key(1), gemm.rhs)
    dims = (((gemm.contracting[0],), (gemm.contracting[1],)), ((), ()))
    product = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims))
    return lambda: product(x, y).block_until_ready()


def torch_gemm(gemm: Gemm) -> Callable[[], Any]:
    """The product as autograd runs it: torch.matmul on (transposed) views."""
    import torch

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(gemm.lhs, generator=generator), torch.randn(gemm.rhs, generator=generator)
    left = x.T if gemm.contracting[0] == 0 else x
    right = y.T if gemm.contracting[1] == 1 else y
    return lambda: torch.matmul(left, right)


def serve_worker(framework: str, threads: int) -> None:
    """Answers "setup" (build and warm every product) and "time" (median seconds of each)."""
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
        build, versions = torch_gemm, {"torch": torch.__version__}
    else:
        import jax

        build, versions = jax_gemm, {"jax": jax.__version__}
    held: dict[str, Callable[[], Any]] = {}

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        if request["op"] == "setup":
            for spec in request["gemms"]:
                gemm = Gemm(**spec)
                held[gemm.name] = build(gemm)
                held[gemm.name]()  # compile / first-touch
            return {"versions": versions}
        if request["op"] == "time":
            reps = request["reps"]
            return {name: statistics.median(time_calls(run, 0.0, reps, reps)) for name, run in held.items()}
        raise ValueError(f"unknown op {request['op']!r}")

    serve(handle)


# --- driver ----------------------------------------------------------------------------------------


def run_rounds(gemms: list[Gemm], args: argparse.Namespace) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    """Per worker ("torch" and each JAX variant), per product: the median seconds of each round."""
    variants = args.variants
    specs = [dataclasses.asdict(g) for g in gemms]
    workers: dict[str, Worker] = {}
    versions: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for name in [*variants, "torch"]:
            env = thread_env(args.threads)
            env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {VARIANTS.get(name, '')}".strip()
            framework = "torch" if name == "torch" else "jax"
            worker = Worker("benchmarks.bench_dots", ["--serve", framework, "--threads", str(args.threads)], env)
            workers[name] = stack.enter_context(worker)
            versions |= worker.request(op="setup", gemms=specs)["versions"]
        times: dict[str, dict[str, list[float]]] = {name: {g.name: [] for g in gemms} for name in workers}
        order = list(workers)
        for r in range(args.rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                for gemm, seconds in workers[name].request(op="time", reps=args.reps).items():
                    times[name][gemm].append(seconds)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return times, versions


def layer_seconds(gemms: list[Gemm], times: dict[str, list[float]]) -> list[float]:
    """Per round, the time of one layer's products weighted by how often the step runs each."""
    rounds = len(next(iter(times.values())))
    return [sum(g.per_layer * times[g.name][r] for g in gemms) for r in range(rounds)]


def markdown(gemms: list[Gemm], times: dict[str, dict[str, list[float]]], versions: dict[str, str],
             args: argparse.Namespace, machine: str, load: tuple[float, float]) -> str:
    variants = args.variants
    flags = "; ".join(f"{v}: `{VARIANTS[v]}`" if VARIANTS[v] else f"{v}: no extra flags" for v in variants)
    lines = [
        f"Machine: {machine}; {args.threads} threads per worker (XLA intra-op and OMP pinned, `torch.set_num_threads`); "
        f"1-minute load average {load[0]:.1f} before, {load[1]:.1f} after. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"Products of one layer's training step at hidden {args.hidden}, FFN {args.ffn}, {args.tokens} tokens "
        f"(batch x length), float32, random inputs; JAX variants ({flags}) and torch each in their own worker, "
        f"{args.rounds} alternating rounds (order rotated), median of {args.reps} calls per product and round, "
        "median over rounds. torch/JAX: median of paired round ratios of JAX time over torch time (> 1: torch faster).",
        "",
        "| product | role | lhs . rhs | per layer | GFLOP | " + " | ".join(f"JAX {v} GFLOP/s" for v in variants)
        + " | torch GFLOP/s | " + " | ".join(f"torch/JAX {v}" for v in variants) + " |",
        "|---" * (5 + 2 * len(variants) + 1) + "|",
    ]

    def row(label: str, role: str, shape: str, per_layer: str, gflop: float, seconds: dict[str, list[float]]) -> str:
        rates = [f"{gflop / statistics.median(seconds[v]):.0f}" for v in [*variants, "torch"]]
        ratios = [f"**{paired_ratio(seconds[v], seconds['torch']):.2f}**" for v in variants]
        return f"| {label} | {role} | {shape} | {per_layer} | {gflop:.2f} | " + " | ".join(rates + ratios) + " |"

    for g in gemms:
        shape = f"[{g.lhs[0]}x{g.lhs[1]}]{'^T' if g.contracting[0] == 0 else ''} . [{g.rhs[0]}x{g.rhs[1]}]" \
                f"{'^T' if g.contracting[1] == 1 else ''}"
        lines.append(row(g.name, g.role, shape, str(g.per_layer or ""), g.gflop, {k: v[g.name] for k, v in times.items()}))
    layer = [g for g in gemms if g.per_layer]
    lines.append(row("one layer's products", "all", "", "", sum(g.per_layer * g.gflop for g in layer),
                     {k: layer_seconds(layer, v) for k, v in times.items()}))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--tokens", type=int, default=2048, help="batch x length (bench_training: 16 x 128)")
    parser.add_argument("--square", type=int, default=2048, help="side of the square ceiling matmul")
    parser.add_argument("--variants", type=comma_choices(VARIANTS), default=list(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5, help="calls per product and round (median kept)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--output", help="BENCHMARKS.md to write the section into")
    parser.add_argument("--notes", type=existing_file, help="Markdown appended to the section")
    parser.add_argument("--serve", choices=["jax", "torch"], help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        serve_worker(args.serve, args.threads)
        return
    from benchmarks.report import machine_description, publish

    gemms = layer_gemms(args.hidden, args.ffn, args.tokens, args.square)
    load_before = os.getloadavg()[0]
    times, versions = run_rounds(gemms, args)
    body = markdown(gemms, times, versions, args, machine_description(), (load_before, os.getloadavg()[0]))
    publish(body, "GEMMs of a BERT layer: XLA vs PyTorch", "benchmarks.bench_dots", argv, args.output, args.notes)


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.bench_dots"))
