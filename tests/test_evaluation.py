"""Metrics against hand computations; report arithmetic from recorded numbers."""

import json
import math

import ml_collections
import numpy as np
import pytest

from sklearn import metrics as skm

from theseus_jax.evaluation import bootstrap
from theseus_jax.evaluation.metrics import classification_metrics, perplexity
from theseus_jax.experiments import plots, report, summary
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


def _probabilities(labels, accuracy, rng):
    """Probabilities whose argmax is right on about `accuracy` of the examples."""
    right = rng.random(len(labels)) < accuracy
    predicted = np.where(right, labels, 1 - labels)
    p1 = np.clip(np.where(predicted == 1, 0.75, 0.25) + rng.normal(0, 0.1, len(labels)), 0.01, 0.99)
    return np.stack([1 - p1, p1], axis=1)


def _stage(tmp_path, name, objective, metric, time_to_best, params, layers, seeds):
    """A stage record as summary.stage_record writes it, with saved test predictions per seed."""
    per_seed = []
    for seed, (labels, probabilities) in seeds.items():
        run_dir = tmp_path / name / f"seed_{seed}"
        run_dir.mkdir(parents=True)
        np.savez(run_dir / "test_predictions.npz", labels=labels, probabilities=probabilities)
        value = skm.f1_score(labels, probabilities.argmax(1), average="macro")
        per_seed.append(
            {"seed": seed, "test": {metric: value}, "validation": {metric: value}, "run_dir": str(run_dir), "collapsed": False}
        )
    mean = float(np.mean([e["test"][metric] for e in per_seed]))
    return {
        "name": name, "objective": objective, "metric": metric, "best": {"step": 1}, "history": [],
        "test": {metric: mean}, "validation": {metric: mean}, "per_seed": per_seed,
        "time_until_best_s": time_to_best, "total_time_s": time_to_best + 1,
        "parameters": {"exported_model": params, "exported_layers": layers},
    }


def _mlm_stage(perplexity_value, time_to_best, params, layers):
    return {
        "objective": "mlm", "metric": "perplexity", "best": {"step": 1}, "history": [], "per_seed": [],
        "test": {"perplexity": perplexity_value}, "validation": {"perplexity": perplexity_value + 1},
        "time_until_best_s": time_to_best, "total_time_s": time_to_best + 1,
        "parameters": {"exported_model": params, "exported_layers": layers},
    }


def test_series_comparison_is_computed_from_the_recorded_numbers(tmp_path):
    """RP and the successor-truncated difference per seed, mean, std and a joint bootstrap
    interval, against numpy and scikit-learn on the saved predictions."""
    cfg = ml_collections.ConfigDict(
        {"cls": {"metric": "macro_f1"}, "seeds": "0,1,2", "selection": "validation", "bootstrap": {"resamples": 200, "seed": 7}}
    )
    rng = np.random.default_rng(0)
    labels = (rng.random(150) < 0.4).astype(np.int32)
    models = {
        name: {seed: _probabilities(labels, acc + 0.03 * seed, rng) for seed in range(3)}
        for name, acc in (("cls_predecessor", 0.85), ("cls_successor", 0.8), ("cls_truncated", 0.7))
    }
    results = {
        "lm_baseline": _mlm_stage(5.0, 100.0, 1000, 6),
        "lm_compress": _mlm_stage(6.0, 40.0, 600, 3),
        **{
            name: _stage(tmp_path, name, "classification", "macro_f1", t, params, layers, {s: (labels, p) for s, p in probs.items()})
            for (name, probs), (t, params, layers) in zip(models.items(), ((30.0, 1000, 6), (12.0, 600, 3), (10.0, 600, 3)))
        },
    }
    comparison = report.compare(results, cfg)
    out = comparison.to_json()  # report.json's keys
    f1 = {name: np.array([skm.f1_score(labels, models[name][s].argmax(1), average="macro") for s in range(3)]) for name in models}
    rp = f1["cls_successor"] / f1["cls_predecessor"]
    diff = f1["cls_successor"] - f1["cls_truncated"]
    assert out["selection"] == "validation"
    assert out["compression_ratio"] == pytest.approx(1000 / 600)
    assert [v["value"] for v in out["retained_performance_per_seed"]] == pytest.approx(rp)
    assert out["retained_performance"] == pytest.approx(rp.mean())
    assert out["retained_performance_std"] == pytest.approx(rp.std(ddof=1))
    assert out["successor_minus_truncated"] == pytest.approx(diff.mean())
    assert out["successor_minus_truncated_std"] == pytest.approx(diff.std(ddof=1))
    assert out["successor_minus_truncated_positive_seeds"] == int((diff > 0).sum())
    assert out["finetuning_speedup"] == pytest.approx(30 / 12)
    assert out["lm_finetuning_speedup"] == pytest.approx(100 / 40)
    assert out["perplexity_lm_compress"] == 6.0
    # The RP interval: the same resample of test examples for numerator, denominator and every seed.
    draws = np.random.default_rng(7).integers(0, len(labels), size=(200, len(labels)))

    def rp_interval(model):
        """The percentile interval of the mean RP over seeds, by hand on each resample."""
        values = [
            np.mean([
                skm.f1_score(labels[i], models[model][s].argmax(1)[i], average="macro")
                / skm.f1_score(labels[i], models["cls_predecessor"][s].argmax(1)[i], average="macro")
                for s in range(3)
            ])
            for i in draws
        ]
        return np.percentile(values, [2.5, 97.5])

    assert out["retained_performance_ci95"] == pytest.approx(rp_interval("cls_successor"), rel=1e-9)
    assert out["retained_performance_ci95"][0] < out["retained_performance"] < out["retained_performance_ci95"][1]
    # The truncated baseline against the predecessor, the same numbers as a student's.
    rp_truncated = f1["cls_truncated"] / f1["cls_predecessor"]
    assert [v["value"] for v in out["retained_performance_per_seed_cls_truncated"]] == pytest.approx(rp_truncated)
    assert out["retained_performance_cls_truncated"] == pytest.approx(rp_truncated.mean())
    assert out["retained_performance_std_cls_truncated"] == pytest.approx(rp_truncated.std(ddof=1))
    low, high = rp_interval("cls_truncated")
    assert out["retained_performance_ci95_cls_truncated"] == pytest.approx([low, high], rel=1e-9)
    assert out["finetuning_speedup_cls_truncated"] == pytest.approx(30 / 10)
    assert out["compression_ratio_cls_truncated"] == pytest.approx(1000 / 600)
    table = {row.split("[`")[1].split("`")[0]: row.split(" | ") for row in report.comparison_table(results, comparison) if "[`" in row}
    assert table["cls_truncated"][4] == f"{rp_truncated.mean():.4f} ± {rp_truncated.std(ddof=1):.4f} [{low:.4f}, {high:.4f}]"
    assert table["cls_truncated"][6] == "3.00 |"
    assert table["cls_truncated"][2] == "600 (1.67)"
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in report.per_seed_table(results, comparison)[2:]]
    per_seed = {c[0].strip("`"): c[1:] for c in cells}
    assert per_seed["cls_successor"] == [f"{v:.4f} ({d:+.4f})" for v, d in zip(f1["cls_successor"], diff)]
    assert per_seed["cls_truncated"] == [f"{v:.4f}" for v in f1["cls_truncated"]]  # the baseline itself
    # Every seed favours the successor here, but the paired interval reaches below 0.
    assert (diff > 0).all() and out["successor_minus_truncated_ci95"][0] < 0
    assert out["successor_vs_truncated"] == "not separated"
    # A truncated baseline that collapsed in one seed is no comparison, whatever the mean says.
    results["cls_truncated"]["per_seed"][1]["collapsed"] = True
    assert report.compare(results, cfg).models["cls_successor"].vs_truncated == "not comparable: the baseline collapsed in seeds [1]"
    # The seeds plot draws every downstream seed's test metric, collapsed ones marked.
    points = plots.seed_points(results, "macro_f1")
    assert list(points) == ["cls_predecessor", "cls_successor", "cls_truncated"]
    assert points["cls_successor"]["values"] == pytest.approx(f1["cls_successor"])
    assert points["cls_truncated"]["collapsed"] == [False, True, False]
    assert plots.plot_seeds(tmp_path, points, "macro_f1") == ["series_seeds.png"]
    assert (tmp_path / "series_seeds.png").read_bytes()[:4] == b"\x89PNG"
    one_seed = {stage: {**p, "seeds": p["seeds"][:1], "values": p["values"][:1]} for stage, p in points.items()}
    assert plots.plot_seeds(tmp_path / "one", one_seed, "macro_f1") == []  # nothing to show beyond the table


@pytest.mark.parametrize(
    "values, interval, expected",
    [
        ([0.02, 0.01, 0.03], [0.005, 0.03], "better"),
        ([0.02, 0.01, 0.03], [-0.001, 0.03], "not separated"),  # the interval reaches 0
        ([0.30, -0.004, 0.01], [0.1, 0.2], "not separated"),  # one seed disagrees (the e5 study's seeds 0, 1)
        ([-0.02, -0.01], [-0.03, -0.002], "worse"),
        ([-0.02, -0.01], None, "worse"),  # no joint interval: the seeds decide
    ],
)
def test_a_paired_difference_is_called_better_only_when_every_seed_and_the_interval_agree(values, interval, expected):
    differences = [{"seed": s, "value": v} for s, v in enumerate(values)]
    assert summary.verdict(differences, interval, collapsed_seeds=[]) == expected


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy", "roc_auc"])
def test_bootstrap_interval_matches_numpy_resampling(metric):
    rng = np.random.default_rng(1)
    labels = (rng.random(120) < 0.3).astype(np.int64)
    probabilities = _probabilities(labels, 0.8, rng)
    low, high = bootstrap.metric_interval(metric, labels, probabilities, resamples=1000, seed=3)
    draws = np.random.default_rng(3).integers(0, 120, size=(1000, 120))
    reference = {
        "macro_f1": lambda i: skm.f1_score(labels[i], probabilities[i].argmax(1), average="macro", labels=[0, 1], zero_division=0),
        "accuracy": lambda i: skm.accuracy_score(labels[i], probabilities[i].argmax(1)),
        "roc_auc": lambda i: skm.roc_auc_score(labels[i], probabilities[i, 1]),
    }[metric]
    assert [low, high] == pytest.approx(np.percentile([reference(i) for i in draws], [2.5, 97.5]), rel=1e-12)
    point = reference(np.arange(120))
    assert low < point < high
    # Another seed draws other resamples.
    assert bootstrap.metric_interval(metric, labels, probabilities, resamples=1000, seed=4) != [low, high]


def test_bootstrap_macro_f1_counts_an_absent_class_as_zero_like_scikit_learn():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1]] * 4)  # one class predicted: class 1's F1 is 0
    indices = np.array([[0, 1, 2, 3], [0, 0, 1, 1], [2, 3, 2, 3]])
    got = bootstrap.resampled_scores("macro_f1", labels, probabilities, indices)
    expected = [skm.f1_score(labels[i], probabilities[i].argmax(1), average="macro", labels=[0, 1], zero_division=0) for i in indices]
    assert got == pytest.approx(expected)


def test_a_single_class_model_is_flagged(tmp_path):
    labels = np.array([0, 1, 1, 0, 1, 0])
    one_class = np.tile([0.2, 0.8], (6, 1))
    two_classes = np.array([[0.9, 0.1], [0.1, 0.9]] * 3)
    best = {"step": 4, "validation": classification_metrics(labels, two_classes), "test": classification_metrics(labels, one_class)}
    np.savez(tmp_path / "test_predictions.npz", labels=labels, probabilities=one_class)
    cfg = ml_collections.ConfigDict({"bootstrap": {"resamples": 50, "seed": 0}})
    record = summary.run_record(best, "classification", "macro_f1", tmp_path, cfg)
    assert record["collapsed"] is True
    assert record["predicted_classes"] == {"validation": 2, "test": 1}
    best["test"] = classification_metrics(labels, two_classes)
    assert summary.collapse(best) == {
        "predicted_classes": {"validation": 2, "test": 2}, "largest_class_share": {"validation": 0.5, "test": 0.5}, "collapsed": False
    }
    best["validation"] = classification_metrics(labels, one_class)  # collapsed on validation counts too
    assert summary.collapse(best)["collapsed"] is True
    # The report says so.
    result = {
        "name": "cls_truncated", "pipeline": "cls_truncated", "objective": "classification", "metric": "macro_f1",
        "selection": "validation", "seed": 0, "learning_rate": 1e-4, "history": [], "best": {"epoch": 0, "step": 4},
        "time_until_best_s": 1.0, "total_time_s": 2.0, "data": {}, "best_model_dir": "best",
        "parameters": {"exported_model": 10, "exported_layers": 2}, **record,
    }
    result["per_seed"] = [{k: result.get(k) for k in summary.PER_SEED_KEYS}]
    report.write_run_report(tmp_path, result, ml_collections.ConfigDict({"x": 1}))
    assert "WARNING: collapsed" in (tmp_path / "report.md").read_text()


def _confusion(labels, predicted):
    return classification_metrics(labels, np.eye(2)[predicted])["confusion_matrix"]


def _minority_named_three_times():
    """The e5 study's validation split (332 OTHER, 169 OFFENSE) and predictions that call
    OFFENSE for 3 tweets only (two false, one true)."""
    labels = np.array([0] * 332 + [1] * 169)
    predicted = np.zeros(501, dtype=int)
    predicted[[0, 1, 332]] = 1
    return labels, predicted


def test_a_model_that_names_the_minority_class_for_a_handful_of_examples_is_flagged():
    """The e5 study's truncated seed 1: 3 of 501 validation tweets called OFFENSE, 0.403 macro F1.
    One class gets 498 / 501 = 99.4% of the predictions: collapsed, though two classes appear."""
    labels, predicted = _minority_named_three_times()
    best = {"step": 9, "validation": {"confusion_matrix": _confusion(labels, predicted)}}
    flags = summary.collapse(best)
    assert flags["predicted_classes"] == {"validation": 2}
    assert flags["largest_class_share"]["validation"] == pytest.approx(498 / 501)
    assert flags["collapsed"] is True
    predicted[[2, 3, 333]] = 1  # 6 of 501 (98.8%): a weak model, not a stuck one
    assert summary.collapse({"validation": {"confusion_matrix": _confusion(labels, predicted)}})["collapsed"] is False


def test_a_reused_run_is_judged_by_the_current_collapse_rule():
    """Runs finished before the rule changed carry the old flag in their report.json; a series
    that reuses them recomputes it from the selected step's confusion matrices."""
    matrix = _confusion(*_minority_named_three_times())
    stored = {
        "objective": "classification", "best": {"validation": {"confusion_matrix": matrix}, "test": {"confusion_matrix": matrix}},
        "collapsed": False, "predicted_classes": {"validation": 2, "test": 2}, "per_seed": [{"seed": 1, "collapsed": False}],
    }
    run = summary.with_current_collapse(stored)
    assert run["collapsed"] is True and run["per_seed"][0]["collapsed"] is True
    assert run["per_seed"][0]["seed"] == 1
    mlm = {"objective": "mlm", "best": {"step": 3}, "collapsed": False}
    assert summary.with_current_collapse(dict(mlm)) == mlm


def test_workdir_with_another_config_is_refused(tmp_path):
    assert claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 2}}, overwrite=False) is False
    assert claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 2}}, overwrite=False) is True
    with pytest.raises(WorkdirConflict, match=r"fields differ: b\.c"):
        claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 3}}, overwrite=False)
    (tmp_path / "run" / "old.txt").write_text("x")
    assert claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 3}}, overwrite=True) is False
    assert not (tmp_path / "run" / "old.txt").exists()
    # A field added since the run was saved: the same run when it holds its default.
    defaults = {"a": 0, "b": {"c": 0, "new": "all"}}
    assert claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 3, "new": "all"}}, False, defaults) is True
    assert json.loads((tmp_path / "run" / "config.json").read_text())["b"]["new"] == "all"
    with pytest.raises(WorkdirConflict, match=r"fields differ: b\.newer"):  # not its default
        claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 3, "new": "all", "newer": 1}}, False, {"b": {"newer": 0}})
    with pytest.raises(WorkdirConflict, match=r"fields differ: b\.c"):  # an old field changed
        claim_workdir(tmp_path / "run", {"a": 1, "b": {"c": 4, "new": "all"}}, False, defaults)


def test_series_plot_draws_each_models_validation_metric_per_training_step(tmp_path, monkeypatch):
    """One line per downstream model at its evaluated steps (different step counts, an early
    stop), its selected step starred; the LM stage is not drawn."""
    def stage(objective, steps, values, selected):
        history = [{"epoch": i, "step": s, "validation": {"macro_f1": v}} for i, (s, v) in enumerate(zip(steps, values))]
        return {"objective": objective, "history": history, "best": {"step": selected}}

    results = {
        "lm_compress": stage("mlm", [10, 20], [0.0, 0.0], 20),
        "cls_predecessor": stage("classification", [15, 30, 45, 60], [0.5, 0.7, 0.65, 0.6], 30),
        "cls_successor": stage("classification", [8, 16], [0.4, 0.55], 16),  # fewer steps per epoch, stopped early
    }
    drawn = {}
    monkeypatch.setattr(report.atomic, "save_figure", lambda fig, path, **_: drawn.update(
        path=path, xlabel=fig.axes[0].get_xlabel(), legend=[t.get_text() for t in fig.axes[0].get_legend().get_texts()],
        lines=[(list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].lines],
    ))
    assert plots.plot_series(tmp_path, plots.series_points(results, "macro_f1"), "macro_f1") == ["series_metric.png"]
    assert drawn["path"] == tmp_path / "series_metric.png" and drawn["xlabel"] == "training step"
    assert drawn["legend"] == ["cls_predecessor", "cls_successor"]
    assert drawn["lines"] == [  # each model's (step, validation) pairs, then its selected point
        ([15, 30, 45, 60], [0.5, 0.7, 0.65, 0.6]), ([30], [0.7]), ([8, 16], [0.4, 0.55]), ([16], [0.55]),
    ]


def test_a_ratio_to_a_zero_metric_is_not_available_and_the_series_report_is_written(tmp_path):
    """A predecessor whose test macro F1 is 0 in one seed (every prediction wrong, by hand)
    leaves the RP of that seed undefined: null in report.json, "n/a" in report.md, no crash."""
    cfg = ml_collections.ConfigDict(
        {"cls": {"metric": "macro_f1"}, "seeds": "0,1", "selection": "validation", "bootstrap": {"resamples": 50, "seed": 0}}
    )
    labels = np.array([0, 1] * 10)
    right, wrong = (np.eye(2)[labels] * 0.8 + 0.1), (np.eye(2)[1 - labels] * 0.8 + 0.1)
    assert skm.f1_score(labels, wrong.argmax(1), average="macro") == 0.0
    results = {
        name: _stage(tmp_path, name, "classification", "macro_f1", 10.0, 1000 if name == "cls_predecessor" else 600,
                     4 if name == "cls_predecessor" else 2, seeds)
        for name, seeds in (("cls_predecessor", {0: (labels, right), 1: (labels, wrong)}),
                            ("cls_truncated", {0: (labels, right), 1: (labels, right)}))
    }
    for stage in results.values():
        stage["per_seed"] = [{**e, "learning_rate": 1e-4, "selected_step": 1} for e in stage["per_seed"]]
    comparison = report.compare(results, cfg)
    out = comparison.to_json()
    assert [v["value"] for v in out["retained_performance_per_seed_cls_truncated"]] == [1.0, None]
    assert out["retained_performance_cls_truncated"] is None and out["retained_performance_ci95_cls_truncated"] is None
    report.write_series_report(tmp_path, results, comparison, cfg)
    written = json.loads((tmp_path / "report.json").read_text())["comparison"]
    assert written["retained_performance_cls_truncated"] is None
    row = next(r for r in (tmp_path / "report.md").read_text().splitlines() if "[`cls_truncated`]" in r and "(1.67)" in r)
    assert row.split(" | ")[4] == "n/a n/a"
