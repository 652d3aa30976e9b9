"""Percentile bootstrap over test examples: intervals for a metric and for ratios of metrics.

Pure numpy. One seeded draw of resample indices serves every model evaluated on the same
test examples in the same order, so a ratio (retained performance) or a difference of two
models is resampled jointly, as paired data should be.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from theseus_jax.evaluation.metrics import score

RESAMPLES = 1000


def resample_indices(num_examples: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """[resamples, num_examples] indices drawn with replacement from one seeded generator."""
    if num_examples <= 0:
        raise ValueError("the bootstrap needs at least one example")
    return np.random.default_rng(seed).integers(0, num_examples, size=(resamples, num_examples))


def resampled_scores(metric: str, labels: np.ndarray, probabilities: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The metric on each resample (row of `indices`); macro F1 and accuracy vectorised."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    if metric not in ("macro_f1", "accuracy"):
        return np.array([score(metric, labels[row], probabilities[row]) for row in indices], np.float64)
    truth, predicted = labels[indices], probabilities.argmax(-1)[indices]
    if metric == "accuracy":
        return (truth == predicted).mean(-1)
    f1 = []
    for k in range(probabilities.shape[-1]):  # F1 of class k; 0 where it is neither true nor predicted
        tp = ((predicted == k) & (truth == k)).sum(-1)
        wrong = ((predicted == k) != (truth == k)).sum(-1)  # false positives + false negatives
        f1.append(np.divide(2 * tp, 2 * tp + wrong, out=np.zeros(len(indices)), where=2 * tp + wrong > 0))
    return np.mean(f1, axis=0)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """[low, high]: the central `level` share of bootstrap values (NaN resamples ignored)."""
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    tail = 100.0 * (1.0 - level) / 2.0
    return [float(x) for x in np.percentile(values, [tail, 100.0 - tail])]


def metric_interval(
    metric: str, labels: np.ndarray, probabilities: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
) -> list[float]:
    """Bootstrap interval of one model's test metric."""
    indices = resample_indices(len(labels), resamples, seed)
    return percentile_interval(resampled_scores(metric, labels, probabilities, indices), level)


def paired_interval(
    metric: str,
    labels: np.ndarray,
    models: Sequence[Sequence[np.ndarray]],
    statistic: Callable[..., np.ndarray],
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> list[float]:
    """Bootstrap interval of `statistic` over several models and seeds, all scored on the same
    resamples. `models[m][s]` holds model m's probabilities for seed s on the shared test
    examples; `statistic(*scores)` gets one [seeds, resamples] array per model and returns one
    value per resample, e.g. `lambda a, b: (a / b).mean(0)` for retained performance
    averaged over seeds, `lambda a, b: (a - b).mean(0)` for a paired difference."""
    indices = resample_indices(len(labels), resamples, seed)
    scores = [np.stack([resampled_scores(metric, labels, p, indices) for p in seeds]) for seeds in models]
    with np.errstate(divide="ignore", invalid="ignore"):
        return percentile_interval(statistic(*scores), level)
