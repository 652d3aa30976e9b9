"""Per-dataset statistics, as the source study reports them."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from theseus_jax.data.records import Example


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def dataset_statistics(examples: Sequence[Example], token_lengths: Sequence[int], max_length: int) -> dict[str, Any]:
    """Counts, class balance, characters and tokens per text, share truncated at `max_length`.

    `token_lengths` are the untruncated lengths including [CLS] and [SEP].
    """
    if not examples:
        return {"count": 0}
    chars = np.array([len(e.text) for e in examples], np.float64)
    tokens = np.asarray(token_lengths, np.float64)
    labels = [e.label for e in examples if e.label is not None]
    stats: dict[str, Any] = {
        "count": len(examples),
        "characters": _summary(chars),
        "tokens": _summary(tokens),
        "truncated_share": float((tokens > max_length).mean()),
        "max_length": max_length,
    }
    if labels:
        stats["positives"] = int(sum(1 for label in labels if label == 1))
        stats["negatives"] = int(sum(1 for label in labels if label == 0))
    return stats
