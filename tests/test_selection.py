"""Model selection on validation data: best step, learning rate per seed, seeds."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from theseus_jax.data.batching import BatchLoader
from theseus_jax.data.encoding import Encoded
from theseus_jax.experiments import summary
from theseus_jax.experiments.trainer import TrainingJob, train
from theseus_jax.models.bert import BertForSequenceClassification
from theseus_jax.training import optimizer

from tiny_bert import TINY

SIGNAL = 7  # class-1 sequences contain this token, class-0 ones do not


def _token_data(n, seed):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int32)
    ids = []
    for label in labels:
        row = rng.integers(10, TINY.vocab_size, 10).astype(np.int32)
        if label:
            row[rng.integers(1, 10)] = SIGNAL
        ids.append(row)
    return Encoded(ids, np.full(n, 10, np.int32), 16), labels


def _job(selection, validation_labels, test_labels, encoded):
    params = BertForSequenceClassification(TINY).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    tx, mask = optimizer.make_optimizer(params, "all", optimizer.learning_rate_schedule(3e-3, 48))
    loader = lambda labels, shuffle: BatchLoader(encoded, labels, 8, buckets=(16,), shuffle=shuffle, seed=0)
    return TrainingJob(
        name="selection", objective="classification", model=BertForSequenceClassification(TINY), params=params,
        tx=tx, trainable=mask, train_loader=loader(validation_labels, True), validation_loader=loader(validation_labels, False),
        test_loader=loader(test_labels, False), epochs=6, metric="accuracy", export=lambda p: (TINY, p),
        test_texts=[f"text {i}" for i in range(len(test_labels))], selection=selection, eval_every_steps=2,
        checkpoint_every_steps=1000,
    )


def test_the_best_step_is_chosen_on_validation_not_on_test(tmp_path):
    """Test labels are the validation labels inverted (same texts): test accuracy is 1 - validation
    accuracy at every step, so the best validation step is the worst test step."""
    encoded, labels = _token_data(32, seed=0)
    progress = train(_job("validation", labels, 1 - labels, encoded), tmp_path / "validation")
    validation = [h["validation"]["accuracy"] for h in progress.history]
    assert max(validation) > min(validation)  # the run learned, so the splits disagree on the best step
    assert progress.best["step"] == progress.history[int(np.argmax(validation))]["step"]  # first maximum
    assert progress.best["test"]["accuracy"] == pytest.approx(1 - max(validation))
    # Test is evaluated exactly at the steps that improved on validation, never elsewhere.
    improved = [h["step"] for i, h in enumerate(progress.history) if validation[i] > max(validation[:i], default=-1)]
    assert [h["step"] for h in progress.history if "test" in h] == improved
    # The saved test predictions are those of the selected step.
    with np.load(tmp_path / "validation" / "test_predictions.npz") as saved:
        assert np.mean(saved["probabilities"].argmax(1) == saved["labels"]) == pytest.approx(progress.best["test"]["accuracy"])

    # The source study's protocol, asked for explicitly: the same run, chosen on test.
    on_test = train(_job("test", labels, 1 - labels, encoded), tmp_path / "test")
    assert [h["validation"] for h in on_test.history] == [h["validation"] for h in progress.history]
    tested = [h["test"]["accuracy"] for h in on_test.history]
    assert on_test.best["step"] == on_test.history[int(np.argmax(tested))]["step"]
    assert on_test.best["step"] != progress.best["step"]


def _run_candidate(seed, lr, value):
    return {"seed": seed, "learning_rate": lr, "metric": "macro_f1", "selection": "validation",
            "validation": {"macro_f1": value}, "test": {"macro_f1": 1 - value}, "run_dir": f"lr_{lr:g}",
            "time_until_best_s": 1.0, "total_time_s": 2.0, "objective": "mlm"}


def test_the_learning_rate_is_chosen_on_validation():
    candidates = [_run_candidate(0, 2e-5, 0.60), _run_candidate(0, 5e-5, 0.72), _run_candidate(0, 1e-4, 0.72)]
    assert summary.choose_learning_rate(candidates)["learning_rate"] == 5e-5  # best validation, first of a tie
    perplexity = [dict(c, metric="perplexity", validation={"perplexity": v}) for c, v in zip(candidates, (9.0, 7.0, 8.0))]
    assert summary.choose_learning_rate(perplexity)["learning_rate"] == 5e-5  # lower is better


def _germeval_file(path, n, seed):
    rng = np.random.default_rng(seed)
    lines = [f"tweet {seed} {i} {'du Idiot' if i % 3 == 0 else 'schönes Wetter'} {rng.integers(1e9)}\t"
             f"{'OFFENSE' if i % 3 == 0 else 'OTHER'}\t{'INSULT' if i % 3 == 0 else 'OTHER'}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_validation_is_carved_from_training_data_stratified_and_seeded(tmp_path):
    from configs.base import data_config
    from theseus_jax.data.records import DataError
    from theseus_jax.experiments.datasets import split_examples

    train_path = _germeval_file(tmp_path / "train.tsv", 300, 0)
    data = data_config(format="germeval", train_path=train_path, test_share=0.2, validation_share=0.1)
    splits = split_examples(data, labelled=True)
    texts = lambda part: {e.text for e in part}
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (216, 24, 60)
    assert not texts(splits.train) & texts(splits.validation) and not texts(splits.validation) & texts(splits.test)
    assert sum(e.label for e in splits.validation) == 8  # a third offensive, as in the file
    assert "0.1 of the training examples" in splits.sources["validation"]
    assert texts(split_examples(data, labelled=True).validation) == texts(splits.validation)  # split_seed fixes it
    data.split_seed = 1
    assert texts(split_examples(data, labelled=True).validation) != texts(splits.validation)
    # A validation file replaces the carved share.
    data.validation_path = _germeval_file(tmp_path / "dev.tsv", 30, 1)
    with_file = split_examples(data, labelled=True)
    assert len(with_file.validation) == 30 and len(with_file.train) == 240
    assert with_file.sources["validation"] == data.validation_path
    data.validation_path, data.validation_share = "", 0.0
    with pytest.raises(DataError, match="validation_share"):
        split_examples(data, labelled=True)


def test_a_series_with_several_seeds_runs_seed_major_and_reports_after_each_seed(tmp_path, monkeypatch):
    """Every stage of seed 0 runs before seed 1 starts (each pass asks the stages for the seeds
    done so far: finished runs are reused), and the series report is rewritten after each seed
    over the seeds it covers."""
    from theseus_jax.experiments import pipelines, report

    calls, reports = [], []

    def fake_stage(cfg, workdir, name, objective, run, model=None, seeds=None):
        calls.append((name, list(seeds), model))
        return {"per_seed": [{"seed": s, "best_model_dir": f"{name}/{s}"} for s in seeds]}

    monkeypatch.setattr(pipelines, "_stage", fake_stage)
    monkeypatch.setattr(report, "compare", lambda results, cfg, seeds: {"seeds": seeds})
    monkeypatch.setattr(report, "write_series_report", lambda wd, results, comparison, cfg: reports.append(comparison["seeds"]))
    cfg = ml_collections.ConfigDict({"seeds": "3,1", "cls_model": "predecessor",
                                     "series": {"stages": "cls_predecessor,cls_compress,cls_truncated"}})
    out = pipelines.series(cfg, tmp_path)
    assert [(name, seeds) for name, seeds, _ in calls] == [
        ("cls_predecessor", [3]), ("cls_compress", [3]), ("cls_truncated", [3]),
        ("cls_predecessor", [3, 1]), ("cls_compress", [3, 1]), ("cls_truncated", [3, 1]),
    ]
    # cls_compress starts from cls_predecessor's selected model of the same seed.
    assert calls[4][2] == {3: "cls_predecessor/3", 1: "cls_predecessor/1"}
    assert reports == [[3], [3, 1]] and out["comparison"]["seeds"] == [3, 1]


def test_the_first_seed_of_a_several_seed_stage_with_one_rate_gets_a_stage_record(tmp_path):
    """A seed-major series asks an MLM stage (one learning rate) for seed 0 alone: its record
    and report are the stage's over that seed (folders seed_<s>/), not the bare run."""
    from theseus_jax.experiments import report

    run = {
        "name": "lm_compress", "pipeline": "lm_compress", "objective": "mlm", "metric": "perplexity", "selection": "validation",
        "seed": 0, "learning_rate": 1e-4, "selected_step": 282, "validation": {"perplexity": 15.0}, "test": {"perplexity": 16.0},
        "test_ci95": None, "collapsed": False, "predicted_classes": None, "best_model_dir": "b", "run_dir": "r",
        "time_until_best_s": 10.0, "total_time_s": 12.0, "history": [], "best": {"step": 282}, "parameters": {}, "data": {},
    }
    cfg = ml_collections.ConfigDict({"seeds": "0,1,2", "selection": "validation"})
    record = summary.stage_record("lm_compress", {0: [run]}, cfg)
    assert record["seeds"] == [0] and record["learning_rates"] == [1e-4]
    assert record["per_seed"][0]["test"] == {"perplexity": 16.0} and record["test"]["perplexity"] == 16.0
    report.write_stage_report(tmp_path, record, cfg)
    assert "| 0 | 0.0001 | 282 | 15" in (tmp_path / "report.md").read_text()
    # One seed configured: the run is the stage, as before.
    assert summary.stage_record("lm_compress", {0: [run]}, ml_collections.ConfigDict({"seeds": "0"})) is run
