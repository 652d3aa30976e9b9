"""Side-by-side timing protocol shared by the benchmarks.

Frameworks never share a process (idle thread pools spin and steal the cores): each runs
in its own long-lived worker that answers JSON requests on stdin/stdout, and the driver
asks the workers in turn (A, B, A, B, ...) so that load drift hits both alike; results
are medians of paired per-round ratios. The machine's matmul ceiling (a jitted 2048^3
float32 matmul) is measured by a worker too, so "% of ceiling" refers to the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
_REPLY = "@@reply "  # marks the worker's answers among whatever else it prints


def encoder_gflops(layers: int, hidden: int, intermediate: int, length: int) -> float:
    """Forward FLOPs of the encoder per sequence (projections, FFN, attention scores/context)."""
    per_layer = 2 * length * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * length * length * hidden
    return layers * per_layer / 1e9


def time_calls(fn: Callable[[], object], budget_s: float, min_reps: int, max_reps: int) -> list[float]:
    """Seconds per call: at least `min_reps`, then until `budget_s` is spent or `max_reps` reached."""
    times: list[float] = []
    while len(times) < min_reps or (sum(times) < budget_s and len(times) < max_reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def thread_env(threads: int) -> dict[str, str]:
    """Environment pinning both frameworks to `threads` compute threads."""
    # Only "--name=value" flags: XLA stops reading XLA_FLAGS at the first token that is not one
    # (a bare "intra_op_parallelism_threads=2" here once hid every flag after it).
    flags = os.environ.get("XLA_FLAGS", "")
    return os.environ | {
        "OMP_NUM_THREADS": str(threads),
        "XLA_FLAGS": f"{flags} --xla_cpu_multi_thread_eigen={str(threads > 1).lower()}".strip(),
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_ceiling_gflops(size: int = 2048, reps: int = 5, dtype: str = "float32") -> float:
    """Median GFLOP/s of a jitted size^3 matmul (float32 unless `dtype`): what XLA's dot
    reaches on this machine's default device."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = time_calls(lambda: matmul(a, b).block_until_ready(), 0.0, reps, reps)
    return 2 * size**3 / statistics.median(times) / 1e9


class Worker:
    """A long-lived subprocess answering one JSON request per line (see `serve`)."""

    def __init__(self, module: str, args: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=REPO, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def request(self, **message: Any) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(_REPLY):
                reply = json.loads(line[len(_REPLY):])
                if "error" in reply:
                    raise RuntimeError(f"worker failed: {reply['error']}")
                return reply
        raise RuntimeError(f"worker exited with status {self.process.wait()}")

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.close()


def serve(handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The worker's loop: one request per stdin line, one marked reply per request."""
    for line in sys.stdin:
        try:
            reply = handle(json.loads(line))
        except Exception as error:  # reported to the driver, which raises it
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(_REPLY + json.dumps(reply), flush=True)


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median over rounds of numerator / denominator (paired round by round)."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))
