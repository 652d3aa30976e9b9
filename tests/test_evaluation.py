"""Metrics against hand computations; report arithmetic from recorded numbers."""

import math

import ml_collections
import numpy as np
import pytest

from theseus_jax.evaluation.metrics import classification_metrics, perplexity
from theseus_jax.experiments import report
from theseus_jax.experiments.checkpoints import WorkdirConflict, claim_workdir


def test_classification_metrics_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    # positive-class probabilities: predictions 1,1,0,1,0,0,0,0 -> TP 2, FN 1, FP 1, TN 4
    p1 = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05])
    m = classification_metrics(labels, np.stack([1 - p1, p1], axis=1))
    f1_pos = 2 * 2 / (2 * 2 + 1 + 1)  # 2TP / (2TP + FP + FN)
    f1_neg = 2 * 4 / (2 * 4 + 1 + 1)
    assert m["macro_f1"] == pytest.approx((f1_pos + f1_neg) / 2)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["confusion_matrix"] == [[4, 1], [1, 2]]
    assert m["precision"] == pytest.approx([4 / 5, 2 / 3])
    assert m["recall"] == pytest.approx([4 / 5, 2 / 3])
    # ROC AUC = share of (positive, negative) pairs ranked correctly: positives 0.9, 0.8, 0.3
    # beat all 5 negatives, except 0.3 < 0.7 and 0.3 < 0.4 -> 13 of 15.
    assert m["roc_auc"] == pytest.approx(13 / 15)


def test_roc_auc_is_nan_with_one_class():
    m = classification_metrics(np.array([0, 0]), np.array([[0.7, 0.3], [0.6, 0.4]]))
    assert math.isnan(m["roc_auc"])
    with pytest.raises(ValueError, match="as many labels"):
        classification_metrics(np.array([0]), np.zeros((2, 2)))


def test_perplexity():
    assert perplexity(2.0 * 10, 10) == pytest.approx(math.exp(2.0))
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def _stage(objective, metric, value, time_to_best, params, layers):
    best = {metric: value, "epoch": 0, "step": 1, "elapsed_s": time_to_best}
    return {
        "objective": objective,
        "metric": metric,
        "best": best,
        "history": [best],
        "time_until_best_s": time_to_best,
        "total_time_s": time_to_best + 1,
        "parameters": {"exported_model": params, "exported_layers": layers},
    }


def test_series_comparison_is_computed_from_the_recorded_numbers():
    cfg = ml_collections.ConfigDict({"cls": {"metric": "macro_f1"}})
    results = {
        "lm_baseline": _stage("mlm", "perplexity", 5.0, 100.0, 1000, 6),
        "lm_compress": _stage("mlm", "perplexity", 6.0, 40.0, 600, 3),
        "cls_predecessor": _stage("classification", "macro_f1", 0.80, 30.0, 1000, 6),
        "cls_successor": _stage("classification", "macro_f1", 0.78, 12.0, 600, 3),
        "cls_truncated": _stage("classification", "macro_f1", 0.70, 10.0, 600, 3),
    }
    out = report.compare(results, cfg)
    assert out["compression_ratio"] == pytest.approx(1000 / 600)
    assert out["retained_performance"] == pytest.approx(0.78 / 0.80)
    assert out["finetuning_speedup"] == pytest.approx(30 / 12)
    assert out["lm_finetuning_speedup"] == pytest.approx(100 / 40)
    assert out["successor_beats_truncated"] is True
    assert out["perplexity_lm_compress"] == 6.0


def test_workdir_with_another_config_is_refused(tmp_path):
    assert claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 2}}, overwrite=False) is False
    assert claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 2}}, overwrite=False) is True
    with pytest.raises(WorkdirConflict, match=r"fields differ: b\.c"):
        claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 3}}, overwrite=False)
    (tmp_path / "run" / "old.txt").write_text("x")
    assert claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 3}}, overwrite=True) is False
    assert not (tmp_path / "run" / "old.txt").exists()
