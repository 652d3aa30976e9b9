"""Task metrics on the host, from scikit-learn, and perplexity from summed MLM losses."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Macro F1, ROC AUC, accuracy, per-class precision/recall and the confusion matrix.

    `probabilities` is [N, num_labels]; the prediction is the argmax, ROC AUC uses the
    positive class's probability (binary) or one-vs-rest macro (multi-class).
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape[0] != probabilities.shape[0] or labels.shape[0] == 0:
        raise ValueError(f"need as many labels as predictions, got {labels.shape[0]} and {probabilities.shape[0]}")
    num_labels = probabilities.shape[1]
    classes = list(range(num_labels))
    predictions = probabilities.argmax(-1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    return {
        **{name: score(name, labels, probabilities) for name in SCORES},
        "precision": [float(x) for x in precision],
        "recall": [float(x) for x in recall],
        "f1": [float(x) for x in f1],
        "support": [int(x) for x in support],
        "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=classes).tolist(),
        "num_examples": int(labels.shape[0]),
    }


SCORES = ("macro_f1", "roc_auc", "accuracy")


def score(metric: str, labels: np.ndarray, probabilities: np.ndarray) -> float:
    """One of `SCORES` (higher is better): macro F1 and accuracy of the argmax, ROC AUC of the
    positive class's probability (binary) or one-vs-rest macro (multi-class); NaN where
    ROC AUC is undefined (one class present). Used per resample by the bootstrap."""
    num_labels = probabilities.shape[1]
    classes = list(range(num_labels))
    if metric == "macro_f1":
        return float(skm.f1_score(labels, probabilities.argmax(-1), labels=classes, average="macro", zero_division=0))
    if metric == "accuracy":
        return float(np.mean(labels == probabilities.argmax(-1)))
    if metric == "roc_auc":
        if len(np.unique(labels)) < 2:
            return float("nan")
        if num_labels == 2:
            return float(skm.roc_auc_score(labels, probabilities[:, 1]))
        return float(skm.roc_auc_score(labels, probabilities, multi_class="ovr", labels=classes))
    raise ValueError(f"unknown metric {metric!r}; one of {SCORES}")


def predicted_classes(confusion_matrix: list[list[int]]) -> int:
    """How many classes a model predicted at least once (columns of the confusion matrix)."""
    return int(np.count_nonzero(np.asarray(confusion_matrix).sum(axis=0)))


def largest_prediction_share(confusion_matrix: list[list[int]]) -> float:
    """The share of examples given the most-predicted class (1.0: one class for everything)."""
    predicted = np.asarray(confusion_matrix).sum(axis=0)
    return float(predicted.max() / predicted.sum())


def perplexity(loss_sum: float, count: float) -> float:
    """exp(mean masked-token cross entropy)."""
    if count <= 0:
        raise ValueError("perplexity needs at least one masked token")
    return float(math.exp(loss_sum / count))
