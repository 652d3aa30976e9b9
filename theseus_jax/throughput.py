"""Measured inference speed of exported classifiers: raw texts to probabilities through
`Predictor` (tokenisation, padding to the bucket, jitted forward, probabilities on the host).

Every model runs in the same process, so all share JAX's thread pool and the batch size;
one untimed pass over the texts compiles every shape the timed passes meet; then the models
take turns, one pass each per round, so load that drifts during the measurement hits all of
them alike. A model's figure is the median over rounds; a speed-up is the reference's median
pass time over the model's, e.g. the teacher's over a student's.

    python -m theseus_jax.throughput --model teacher=runs/x/cls_predecessor/best \
        --model student=runs/x/cls_compress/best --file test_texts.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

from theseus_jax.data.batching import BUCKETS
from theseus_jax.data.generic import read_text_lines
from theseus_jax.errors import ArgumentParser, run_cli
from theseus_jax.inference import Predictor
from theseus_jax.memory import peak_rss_bytes


@dataclasses.dataclass(frozen=True)
class Throughput:
    """One model's speed on the texts: `seconds` is the median pass over all of them."""

    name: str
    model_dir: str
    layers: int
    texts: int
    batch_size: int
    batches: int
    threads: int  # CPUs the process may use (JAX's thread pool, shared by every model measured)
    rounds: int
    seconds: float
    texts_per_second: float
    ms_per_batch: float
    speedup: float | None  # the reference's seconds / this model's (None without a reference)
    peak_rss_bytes: int  # the process's peak so far, after this model's passes

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Throughput:
        return cls(**data)


def _one_pass(predictor: Predictor, texts: Sequence[str], batch_size: int) -> float:
    start = time.perf_counter()
    predictor.predict_proba(texts, batch_size)
    return time.perf_counter() - start


def measure(
    models: dict[str, str | os.PathLike],
    texts: Sequence[str],
    batch_size: int = 32,
    rounds: int = 5,
    reference: str | None = None,
    max_length: int = 512,
    buckets: Sequence[int] = BUCKETS,
) -> dict[str, Throughput]:
    """Each model folder's throughput on `texts` (name -> folder), in this process; speed-ups
    against the model named `reference` (e.g. the teacher) when given."""
    if not texts or rounds < 1 or batch_size < 1:
        raise ValueError("measure needs texts, rounds >= 1 and batch_size >= 1")
    if reference is not None and reference not in models:
        raise ValueError(f"reference {reference!r} is not among the models {list(models)}")
    predictors = {name: Predictor(folder, max_length, buckets) for name, folder in models.items()}
    for predictor in predictors.values():
        _one_pass(predictor, texts, batch_size)  # compiles every (batch, bucket) shape of the texts
    times: dict[str, list[float]] = {name: [] for name in models}
    peaks: dict[str, int] = {}
    for _ in range(rounds):
        for name, predictor in predictors.items():
            times[name].append(_one_pass(predictor, texts, batch_size))
            peaks[name] = peak_rss_bytes()
    seconds = {name: statistics.median(ts) for name, ts in times.items()}
    batches = -(-len(texts) // batch_size)
    return {
        name: Throughput(
            name=name, model_dir=str(models[name]), layers=predictors[name].config.num_hidden_layers, texts=len(texts),
            batch_size=batch_size, batches=batches, threads=len(os.sched_getaffinity(0)), rounds=rounds,
            seconds=seconds[name], texts_per_second=len(texts) / seconds[name], ms_per_batch=1e3 * seconds[name] / batches,
            speedup=None if reference is None else seconds[reference] / seconds[name], peak_rss_bytes=peaks[name],
        )
        for name in models
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER",
                        help="a classifier folder to time (repeatable); the first is the reference of the speed-ups")
    parser.add_argument("--file", required=True, type=Path, help="one text per line")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    models = dict(m.split("=", 1) if "=" in m else (Path(m).name, m) for m in args.model)
    texts = [e.text for e in read_text_lines(args.file)]
    for t in measure(models, texts, args.batch_size, args.rounds, reference=next(iter(models))).values():
        print(f"{t.name}\t{t.layers} layers\t{t.texts_per_second:.1f} texts/s\t{t.ms_per_batch:.2f} ms/batch\t"
              f"speed-up {t.speedup:.2f}\tpeak RSS {t.peak_rss_bytes / 2**30:.2f} GiB")


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m theseus_jax.throughput"))
