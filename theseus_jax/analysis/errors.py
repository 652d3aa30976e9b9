"""Error analysis of two binary classifiers on the same test set (before vs after compression).

Samples up to 100 false positives and 100 false negatives of each model (seeded) into a
CSV with both models' probabilities and an empty `error_class` column for a person to
fill in; counts the errors the models share, the new ones and the fixed ones; tallies
the filled-in error classes per model.

    python -m theseus_jax.analysis.errors --predecessor runs/x/cls_predecessor/predictions.csv \
        --successor runs/x/cls_successor/predictions.csv --out runs/x/errors.csv
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from theseus_jax import atomic
from theseus_jax.data.generic import open_text
from theseus_jax.errors import ArgumentParser, UserError, run_cli

FIELDS = ["index", "text", "label", "prob_predecessor", "prob_successor", "model", "error_type", "error_class"]


def _error_sets(labels: np.ndarray, probs: np.ndarray) -> dict[str, set[int]]:
    predictions = (probs > 0.5).astype(int)  # argmax of [1 - p, p], ties to class 0
    return {
        "FP": set(np.nonzero((predictions == 1) & (labels == 0))[0].tolist()),
        "FN": set(np.nonzero((predictions == 0) & (labels == 1))[0].tolist()),
    }


def error_analysis(
    texts: Sequence[str],
    labels: np.ndarray,
    prob_predecessor: np.ndarray,
    prob_successor: np.ndarray,
    per_type: int = 100,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sampled error rows and the shared/new/fixed summary (probabilities of the positive class)."""
    labels = np.asarray(labels).astype(int)
    if not len(texts) == len(labels) == len(prob_predecessor) == len(prob_successor):
        raise ValueError("texts, labels and both probability arrays must have the same length")
    errors = {
        "predecessor": _error_sets(labels, np.asarray(prob_predecessor)),
        "successor": _error_sets(labels, np.asarray(prob_successor)),
    }
    rng = np.random.default_rng(seed)
    rows = []
    for model, by_type in errors.items():
        for error_type, indices in by_type.items():
            chosen = sorted(indices)
            if len(chosen) > per_type:
                chosen = sorted(rng.choice(chosen, per_type, replace=False).tolist())
            for i in chosen:
                rows.append(
                    {
                        "index": i,
                        "text": texts[i],
                        "label": int(labels[i]),
                        "prob_predecessor": float(prob_predecessor[i]),
                        "prob_successor": float(prob_successor[i]),
                        "model": model,
                        "error_type": error_type,
                        "error_class": "",
                    }
                )
    before = errors["predecessor"]["FP"] | errors["predecessor"]["FN"]
    after = errors["successor"]["FP"] | errors["successor"]["FN"]
    summary = {
        "errors_predecessor": len(before),
        "errors_successor": len(after),
        "shared": len(before & after),
        "new": len(after - before),
        "fixed": len(before - after),
        **{f"{t}_{m}": len(errors[m][t]) for m in errors for t in ("FP", "FN")},
    }
    return rows, summary


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic.open_atomic(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def tally_error_classes(path: Path) -> dict[str, dict[str, int]]:
    """Counts of the filled-in `error_class` per model; unfilled rows count as 'unclassified'."""
    tally: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with open_text(path) as f:
        reader = csv.DictReader(f)
        missing = {"model", "error_class"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: missing columns {sorted(missing)}")
        for row in reader:
            tally[row["model"]][row["error_class"].strip() or "unclassified"] += 1
    return {model: dict(counter) for model, counter in tally.items()}


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`predictions.csv` as the pipelines write it: text, label, probability (positive class)."""
    with open_text(path) as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"text", "label", "probability"} <= set(rows[0]):
        raise UserError(f"{path}: expected columns text, label, probability (a predictions.csv of a run)")
    return [r["text"] for r in rows], np.array([int(r["label"]) for r in rows]), np.array([float(r["probability"]) for r in rows])


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predecessor", help="predictions.csv of the predecessor-based classifier")
    parser.add_argument("--successor", help="predictions.csv of the successor-based classifier")
    parser.add_argument("--out", help="CSV of sampled errors to write")
    parser.add_argument("--per-type", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tally", help="a filled-in errors CSV: print its error classes per model")
    args = parser.parse_args(argv)
    if args.tally:
        print(json.dumps(tally_error_classes(Path(args.tally)), indent=2))
        return
    texts, labels, prob_a = read_predictions(Path(args.predecessor))
    texts_b, labels_b, prob_b = read_predictions(Path(args.successor))
    if texts != texts_b or not np.array_equal(labels, labels_b):
        raise UserError(
            f"{args.predecessor} and {args.successor} do not cover the same examples in the same order; "
            "give the predictions of two runs on the same test data"
        )
    rows, summary = error_analysis(texts, labels, prob_a, prob_b, args.per_type, args.seed)
    write_rows(rows, Path(args.out))
    atomic.write_text(Path(args.out).with_suffix(".summary.json"), json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m theseus_jax.analysis.errors"))
