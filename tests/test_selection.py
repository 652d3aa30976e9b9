"""Model selection on validation data: best step, test once at the selected step (also
after a crash and from checkpoints older than that rule), learning rate per seed, seeds."""

import dataclasses
import json
import logging
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from theseus_jax.data.batching import BatchLoader
from theseus_jax.data.encoding import Encoded
from theseus_jax.experiments import summary
from theseus_jax.experiments.checkpoints import Checkpoints
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


class Killed(Exception):
    """A simulated kill: the run stops where it is, its checkpoints as they were written."""


class _Watched:
    """A loader that counts its passes and fails at batch `kill_at` = (epoch, batch)."""

    def __init__(self, loader, kill_at=None):
        self.loader, self.kill_at, self.passes = loader, kill_at, 0

    def num_batches(self, epoch):
        return self.loader.num_batches(epoch)

    def batches(self, epoch, start_batch=0):
        self.passes += 1
        for i, batch in enumerate(self.loader.batches(epoch, start_batch), start_batch):
            if (epoch, i) == self.kill_at:
                raise Killed(f"killed at epoch {epoch}, batch {i}")
            yield batch


def _job(selection, validation_labels, test_labels, encoded, schedule=None, kill_train_at=None, kill_test=False):
    params = BertForSequenceClassification(TINY).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    tx, mask = optimizer.make_optimizer(params, "all", schedule or optimizer.learning_rate_schedule(3e-3, 48))
    loader = lambda labels, shuffle: BatchLoader(encoded, labels, 8, buckets=(16,), shuffle=shuffle, seed=0)
    return TrainingJob(
        name="selection", objective="classification", model=BertForSequenceClassification(TINY), params=params,
        tx=tx, trainable=mask, train_loader=_Watched(loader(validation_labels, True), kill_train_at),
        validation_loader=loader(validation_labels, False),
        test_loader=_Watched(loader(test_labels, False), (0, 0) if kill_test else None), epochs=6, metric="accuracy",
        export=lambda p: (TINY, p), test_texts=[f"text {i}" for i in range(len(test_labels))], selection=selection,
        eval_every_steps=2, checkpoint_every_steps=1000,
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
    # Test is evaluated once, at the selected step, never elsewhere.
    assert [h["step"] for h in progress.history if "test" in h] == [progress.best["step"]]
    # The saved test predictions are those of the selected step.
    with np.load(tmp_path / "validation" / "test_predictions.npz") as saved:
        assert np.mean(saved["probabilities"].argmax(1) == saved["labels"]) == pytest.approx(progress.best["test"]["accuracy"])

    # The source study's protocol, asked for explicitly: the same run, chosen on test.
    job = _job("test", labels, 1 - labels, encoded)
    on_test = train(job, tmp_path / "test")
    assert [h["validation"] for h in on_test.history] == [h["validation"] for h in progress.history]
    tested = [h["test"]["accuracy"] for h in on_test.history]  # test at every evaluation
    assert job.test_loader.passes == len(on_test.history)
    assert on_test.best["step"] == on_test.history[int(np.argmax(tested))]["step"]
    assert on_test.best["step"] != progress.best["step"]


@pytest.mark.parametrize("patience, stopped_early, last_step", [(10, True, 22), (11, False, 24)])
def test_early_stopping_stops_on_a_plateau_and_says_so_only_when_steps_were_left(tmp_path, patience, stopped_early, last_step):
    """Learning rate 0: every evaluation (steps 2, 4, ..., 24) scores the same, so the k-th one
    after the first is the k-th without a gain. Patience 11 is reached at the last evaluation,
    which stops nothing; patience 10 stops at step 22."""
    encoded, labels = _token_data(32, seed=0)
    job = dataclasses.replace(_job("validation", labels, labels, encoded, schedule=optax.constant_schedule(0.0)),
                              early_stopping_patience=patience)
    progress = train(job, tmp_path)
    assert [h["step"] for h in progress.history] == list(range(2, last_step + 1, 2))
    assert progress.stopped_early is stopped_early
    assert progress.best["step"] == 2 and progress.evals_without_improvement == patience


FROZEN_AFTER = 12  # steps with a learning rate; 4 steps an epoch, 24 in all


def _frozen_job(encoded, labels, **kwargs):
    """Learns for 12 steps, then keeps its parameters (learning rate 0): the best validation
    step is step 12 or earlier, and no later evaluation improves on it."""
    schedule = optax.piecewise_constant_schedule(3e-3, {FROZEN_AFTER: 0.0})
    return _job("validation", labels, 1 - labels, encoded, schedule=schedule, **kwargs)


def _without_times(history):
    return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    encoded, labels = _token_data(32, seed=0)
    job = _frozen_job(encoded, labels)
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return job, train(job, workdir), workdir


def test_test_is_evaluated_once_at_the_end_on_the_selected_step(uninterrupted):
    """One pass over the test split, at the step chosen on validation; its metrics are those
    of the exported best/ model, run here directly on the test texts."""
    from theseus_jax.convert import load_hf_checkpoint

    job, progress, workdir = uninterrupted
    encoded, labels = _token_data(32, seed=0)
    validation = [h["validation"]["accuracy"] for h in progress.history]
    assert job.test_loader.passes == 1
    assert progress.best["step"] == progress.history[int(np.argmax(validation))]["step"] <= FROZEN_AFTER
    assert [h["step"] for h in progress.history if "test" in h] == [progress.best["step"]]
    config, params = load_hf_checkpoint(workdir / "best", head="classification")
    ids = np.stack(encoded.ids).astype(np.int32)
    logits = BertForSequenceClassification(config).apply({"params": params}, ids, np.ones_like(ids), np.zeros_like(ids))
    probabilities = np.asarray(jax.nn.softmax(logits))
    assert progress.best["test"]["accuracy"] == np.mean(probabilities.argmax(1) == 1 - labels)
    assert progress.best["test"]["accuracy"] == pytest.approx(1 - max(validation))  # same texts, labels inverted
    with np.load(workdir / "test_predictions.npz") as saved:
        np.testing.assert_allclose(saved["probabilities"], probabilities, atol=1e-5)
    assert progress.elapsed_s > progress.history[-1]["elapsed_s"] >= progress.best["elapsed_s"]


def _checkpointed_steps(workdir, folder="checkpoints"):
    return sorted(int(p.name) for p in (workdir / folder).iterdir() if p.name.isdigit())


def test_a_run_killed_after_its_best_tests_the_kept_parameters_at_its_end(tmp_path, uninterrupted):
    """Killed in epoch 5, after the step-16 checkpoint and the best (step 12 or before): the
    rerun reads the selected step's parameters from disk, trains on and tests them once at
    its end, as the uninterrupted run did."""
    _, reference, reference_dir = uninterrupted
    encoded, labels = _token_data(32, seed=0)
    killed = _frozen_job(encoded, labels, kill_train_at=(4, 2))
    with pytest.raises(Killed):
        train(killed, tmp_path)
    assert killed.test_loader.passes == 0 and _checkpointed_steps(tmp_path)[-1] == 16 >= reference.best["step"]
    # earlier selections deleted once a checkpoint recorded this one
    assert _checkpointed_steps(tmp_path, "checkpoints/best_params") == [reference.best["step"]]
    resumed = _frozen_job(encoded, labels)
    progress = train(resumed, tmp_path)
    assert resumed.test_loader.passes == 1
    assert _without_times(progress.history) == _without_times(reference.history)
    assert _without_times([progress.best]) == _without_times([reference.best])
    saved = lambda workdir: dict(np.load(workdir / "test_predictions.npz"))
    assert all(np.array_equal(saved(tmp_path)[k], saved(reference_dir)[k]) for k in saved(reference_dir))


class _LiveBytes:
    """A loader that records the bytes of all live jax arrays as each of its passes starts."""

    def __init__(self, loader):
        self.loader, self.seen = loader, []

    def num_batches(self, epoch):
        return self.loader.num_batches(epoch)

    def batches(self, epoch, start_batch=0):
        self.seen.append(sum(a.nbytes for a in jax.live_arrays()))
        yield from self.loader.batches(epoch, start_batch)


def test_the_selected_parameters_wait_for_the_test_on_disk_not_in_memory(tmp_path):
    """Evaluations run every 2 steps, the first one selects: at every later evaluation the
    live arrays (other tests' included, the same at each) hold no more than at the first,
    where the earlier code held one more parameter set, its copy of the selection."""
    encoded, labels = _token_data(32, seed=0)
    job = _frozen_job(encoded, labels)
    job.validation_loader = probe = _LiveBytes(job.validation_loader)
    progress = train(job, tmp_path)
    params_bytes = sum(x.nbytes for x in jax.tree.leaves(job.params))
    assert "test" in progress.best and len(probe.seen) == 12
    assert max(probe.seen[1:]) - probe.seen[0] < params_bytes / 4


def test_a_run_killed_after_a_selection_its_last_checkpoint_does_not_record_resumes_as_if_never_killed(
    tmp_path, uninterrupted
):
    """Killed in epoch 2, after the evaluation at step 6 selected anew but before the step-8
    checkpoint: the step-4 checkpoint's selection is still on disk beside the newer one, and
    the rerun retrains from step 4 to the uninterrupted run's history, selection and test."""
    _, reference, reference_dir = uninterrupted
    encoded, labels = _token_data(32, seed=0)
    with pytest.raises(Killed):
        train(_frozen_job(encoded, labels, kill_train_at=(1, 3)), tmp_path)
    assert _checkpointed_steps(tmp_path) == [4]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints" / "best_params").iterdir()) == [4, 6]
    progress = train(_frozen_job(encoded, labels), tmp_path)
    assert _without_times(progress.history) == _without_times(reference.history)
    assert _without_times([progress.best]) == _without_times([reference.best])
    with np.load(tmp_path / "test_predictions.npz") as mine, np.load(reference_dir / "test_predictions.npz") as theirs:
        assert all(np.array_equal(mine[k], theirs[k]) for k in theirs.files)


def test_a_run_killed_during_its_end_test_evaluation_tests_on_rerun_without_training(tmp_path, uninterrupted):
    _, reference, _ = uninterrupted
    encoded, labels = _token_data(32, seed=0)
    with pytest.raises(Killed):
        train(_frozen_job(encoded, labels, kill_test=True), tmp_path)
    assert not (tmp_path / "test_predictions.npz").exists()
    rerun = _frozen_job(encoded, labels)
    progress = train(rerun, tmp_path)
    assert rerun.train_loader.passes == 0 and rerun.test_loader.passes == 1
    assert _without_times(progress.history) == _without_times(reference.history)
    assert (tmp_path / "test_predictions.npz").exists()


def test_a_checkpoint_without_kept_parameters_resumes(tmp_path, uninterrupted):
    """A checkpoint of the earlier format (items state and progress; the test split evaluated
    at every new best, so the best entry holds test metrics) resumes; with no newer best,
    the run evaluates nothing on test again and keeps the recorded test metrics."""
    from theseus_jax.training import steps

    _, reference, _ = uninterrupted
    encoded, labels = _token_data(32, seed=0)
    with pytest.raises(Killed):
        train(_frozen_job(encoded, labels, kill_train_at=(4, 2)), tmp_path)
    target = _frozen_job(encoded, labels)
    state, progress = Checkpoints(tmp_path / "checkpoints").restore(steps.create_train_state(target.params, target.tx))
    recorded = {"accuracy": -1.0}  # what the earlier code measured, marked
    progress.best["test"] = recorded
    next(h for h in progress.history if h["step"] == progress.best["step"])["test"] = recorded
    shutil.rmtree(tmp_path / "checkpoints")
    old = ocp.CheckpointManager(
        (tmp_path / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(create=True), item_names=("state", "progress")
    )  # as the earlier Checkpoints.save wrote it
    items = ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress.to_json()))
    old.save(16, args=items)
    old.close()

    resumed = _frozen_job(encoded, labels)
    progress = train(resumed, tmp_path)
    assert resumed.test_loader.passes == 0
    assert progress.best["step"] == reference.best["step"] and progress.best["test"] == recorded
    assert [h["validation"] for h in progress.history] == [h["validation"] for h in reference.history]


def test_a_checkpoint_holding_the_kept_parameters_resumes_and_tests_them(tmp_path, uninterrupted):
    """The previous format: the selected step's parameters as a `best` item of every
    checkpoint, no best_params/ folder. The rerun finds them there, trains on and tests them
    once, as the uninterrupted run did."""
    from theseus_jax.training import steps

    _, reference, reference_dir = uninterrupted
    encoded, labels = _token_data(32, seed=0)
    with pytest.raises(Killed):
        train(_frozen_job(encoded, labels, kill_train_at=(4, 2)), tmp_path)
    target = _frozen_job(encoded, labels)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    state, progress = checkpoints.restore(steps.create_train_state(target.params, target.tx))
    best = checkpoints.restore_best(state.params, progress.best["step"])
    checkpoints.close()
    shutil.rmtree(tmp_path / "checkpoints")
    old = ocp.CheckpointManager(
        (tmp_path / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(create=True),
        item_names=("state", "progress", "best"),
    )  # as the previous Checkpoints.save wrote it
    old.save(16, args=ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress.to_json()),
                                         best=ocp.args.StandardSave(best)))
    old.close()

    resumed = _frozen_job(encoded, labels)
    progress = train(resumed, tmp_path)
    assert resumed.test_loader.passes == 1
    assert _without_times([progress.best]) == _without_times([reference.best])
    with np.load(tmp_path / "test_predictions.npz") as mine, np.load(reference_dir / "test_predictions.npz") as theirs:
        assert all(np.array_equal(mine[k], theirs[k]) for k in theirs.files)


def _run_candidate(seed, lr, value):
    return {"seed": seed, "learning_rate": lr, "metric": "macro_f1", "selection": "validation",
            "validation": {"macro_f1": value}, "test": {"macro_f1": 1 - value}, "run_dir": f"lr_{lr:g}",
            "time_until_best_s": 1.0, "total_time_s": 2.0, "objective": "mlm"}


def test_the_learning_rate_is_chosen_on_validation():
    candidates = [_run_candidate(0, 2e-5, 0.60), _run_candidate(0, 5e-5, 0.72), _run_candidate(0, 1e-4, 0.72)]
    assert summary.choose_learning_rate(candidates)["learning_rate"] == 5e-5  # best validation, first of a tie
    perplexity = [dict(c, metric="perplexity", validation={"perplexity": v}) for c, v in zip(candidates, (9.0, 7.0, 8.0))]
    assert summary.choose_learning_rate(perplexity)["learning_rate"] == 5e-5  # lower is better


def _capped_run(tmp_path, seed, lr, validation, steps, best_step, stopped_early):
    """A finished classification run by hand: evaluations at `steps`, the selected one at
    `best_step` (None: no evaluation), its test predictions on four examples."""
    run_dir = tmp_path / f"seed_{seed}" / f"lr_{lr:g}"
    run_dir.mkdir(parents=True)
    np.savez(run_dir / summary.PREDICTIONS, labels=np.array([0, 1, 0, 1]),
             probabilities=np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]))
    history = [{"epoch": i, "step": step, "validation": {"macro_f1": validation}} for i, step in enumerate(steps)]
    best = next((h for h in history if h["step"] == best_step), None)
    return summary.RunRecord(
        name="cls_truncated", objective="classification", metric="macro_f1", selection="validation", seed=seed,
        learning_rate=lr, history=history, best=best, time_until_best_s=1.0, total_time_s=2.0,
        parameters={"trained_model": 10, "exported_model": 10, "exported_layers": 2}, run_dir=str(run_dir),
        best_model_dir=str(run_dir / "best"), selected_step=best_step, validation={"macro_f1": validation},
        test={"macro_f1": 0.5}, stopped_early=stopped_early,
    ).to_json()


def test_chosen_runs_that_peaked_at_the_cap_are_counted_per_model(tmp_path):
    """Peaked at the cap = the selected step is the last evaluation and the run was not stopped
    early. Counted over the chosen runs only: per seed, the run of the learning rate chosen on
    validation (seed 1's 1e-4 run peaked at the cap, but 2e-5 is its chosen one)."""
    from theseus_jax.experiments import report

    runs = {
        0: [_capped_run(tmp_path, 0, 1e-4, 0.70, [10, 20, 30], 30, False),  # chosen, at the cap: yes
            _capped_run(tmp_path, 0, 2e-5, 0.60, [10, 20, 30], 10, True)],  # early stopping ended it
        1: [_capped_run(tmp_path, 1, 1e-4, 0.50, [10, 20, 30], 30, False),  # at the cap, not chosen
            _capped_run(tmp_path, 1, 2e-5, 0.65, [10, 20, 30], 20, False)],  # chosen, best before the end: no
        2: [_capped_run(tmp_path, 2, 1e-4, 0.80, [10, 20], 20, True),  # best at its last evaluation, but stopped
            _capped_run(tmp_path, 2, 2e-5, 0.40, [], None, False)],  # no evaluation: no
    }
    assert [[r["peaked_at_cap"] for r in runs[s]] for s in runs] == [[True, False], [True, False], [False, False]]
    assert [r["per_seed"][0]["peaked_at_cap"] for r in runs[0]] == [True, False]
    cfg = ml_collections.ConfigDict({"seeds": "0,1,2", "selection": "validation", "bootstrap": {"resamples": 10, "seed": 0}})
    record = summary.stage_record("cls_truncated", runs, cfg)
    assert [(e["learning_rate"], e["peaked_at_cap"]) for e in record["per_seed"]] == [(1e-4, True), (2e-5, False), (1e-4, False)]
    assert summary.peaked_at_cap(record) == (1, 3)
    table = report.comparison_table({"cls_truncated": record}, report.Comparison("macro_f1", "validation", [0, 1, 2]))
    assert table[0].endswith("| peaked at the cap |") and table[2].endswith("| 1 of 3 |")
    assert report.PEAKED_NOTE in table
    report.write_stage_report(tmp_path, record, cfg)
    rows = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.rsplit("|", 2)[1].strip() for r in rows] == ["yes", "no", "no"]


@pytest.mark.slow  # 25 s end to end; the rule itself runs by default in the next test (a fake trainer)
def test_rate_choice_first_seed_runs_the_later_seeds_at_the_first_seeds_choice(tmp_path, germeval_tsv):
    """A tiny classifier, 2 seeds x 2 learning rates, `rate_choice=first_seed`: seed 0 runs both
    rates, seed 1 only the one seed 0's runs chose on validation, in the folder it would have
    anyway; the record says which rate each seed used, and a rerun reuses all three runs."""
    from test_experiments import _launch, _ok

    workdir = tmp_path / "first_seed"
    args = ("--config.pipeline=cls_baseline", "--config.cls.epochs=1", "--config.cls.data.max_examples=40",
            "--config.seeds=0,1", "--config.cls.learning_rates=1e-4,3e-3", "--config.rate_choice=first_seed")
    _ok(_launch(workdir, germeval_tsv, *args))
    seed_0 = {lr: json.loads((workdir / "seed_0" / f"lr_{lr:g}" / "report.json").read_text()) for lr in (1e-4, 3e-3)}
    validation = {lr: r["best"]["validation"]["macro_f1"] for lr, r in seed_0.items()}
    chosen = 3e-3 if validation[3e-3] > validation[1e-4] else 1e-4  # first of a tie
    assert [p.name for p in (workdir / "seed_1").iterdir() if p.is_dir()] == [f"lr_{chosen:g}"]
    record = json.loads((workdir / "report.json").read_text())
    assert [(e["seed"], e["learning_rate"]) for e in record["per_seed"]] == [(0, chosen), (1, chosen)]
    assert [c["learning_rate"] for c in record["per_seed"][1]["learning_rate_candidates"]] == [chosen]
    assert "the later seeds ran only that rate" in (workdir / "report.md").read_text()
    rerun = _ok(_launch(workdir, germeval_tsv, *args))
    assert rerun.stderr.count("already finished, reusing") == 3 and not re.search(r"step \d+ of \d+, loss", rerun.stderr)


def test_rate_choice_first_seed_runs_the_first_seed_first(tmp_path, monkeypatch):
    """Asked for seeds 2 and 1 alone, a stage with rate_choice=first_seed runs (or reuses) the
    first configured seed at every rate first; per stage, the rate it chose is the later seeds'."""
    from theseus_jax.experiments import pipelines
    from theseus_jax.experiments.stages import STAGES

    runs = []
    best = {"cls_truncated": 3e-3, "cls_compress": 1e-3}  # seed 0's best rate of each stage on validation

    def fake_train(stage, cfg, workdir, model, teacher_dir):
        lr = cfg.cls.learning_rate
        runs.append((stage.name, cfg.seed, lr, workdir.relative_to(tmp_path).as_posix()))
        workdir.mkdir(parents=True)  # a real run leaves its folder
        return {"name": stage.name, "objective": "mlm", "metric": "macro_f1", "selection": "validation", "seed": cfg.seed,
                "learning_rate": lr, "validation": {"macro_f1": 0.9 if lr == best[stage.name] else 0.5},
                "test": {"macro_f1": 0.5}, "selected_step": 1, "collapsed": False, "run_dir": str(workdir),
                "time_until_best_s": 1.0, "total_time_s": 2.0, "parameters": {}}

    monkeypatch.setattr(pipelines, "_train", fake_train)
    cfg = ml_collections.ConfigDict({"seeds": "0,1,2", "rate_choice": "first_seed", "selection": "validation",
                                     "cls": {"learning_rate": 1e-4, "learning_rates": "1e-4,3e-3,1e-3"},
                                     "compression": {"num_successor_layers": 2}, "cls_model": "predecessor"})
    previous = {"cls_predecessor": {"per_seed": [{"seed": s, "best_model_dir": f"teacher/{s}"} for s in (0, 1, 2)]}}
    for name in best:
        record = pipelines.run_stage(STAGES[name], cfg, tmp_path / name, previous, seeds=[2, 1])
        assert [e["learning_rate"] for e in record["per_seed"]] == [best[name]] * 3
    assert runs == [
        *[("cls_truncated", 0, lr, f"cls_truncated/seed_0/lr_{lr:g}") for lr in (1e-4, 3e-3, 1e-3)],
        ("cls_truncated", 2, 3e-3, "cls_truncated/seed_2/lr_0.003"), ("cls_truncated", 1, 3e-3, "cls_truncated/seed_1/lr_0.003"),
        *[("cls_compress", 0, lr, f"cls_compress/seed_0/lr_{lr:g}") for lr in (1e-4, 3e-3, 1e-3)],
        ("cls_compress", 2, 1e-3, "cls_compress/seed_2/lr_0.001"), ("cls_compress", 1, 1e-3, "cls_compress/seed_1/lr_0.001"),
    ]


def test_a_series_numbers_its_runs_out_of_the_planned_total_and_a_rerun_numbers_them_alike(tmp_path, monkeypatch, caplog):
    """A sweep of the teacher and two students at depths 2 and 1 (5 stages), seeds 0,1,2, two
    rates, `rate_choice=first_seed`: 5 x (2 + 1 + 1) = 20 runs, numbered in the order they run
    (seed-major); a rerun reuses them under the same numbers."""
    from theseus_jax.experiments import pipelines, report

    def fake_train(stage, cfg, workdir, model, teacher_dir):
        lr = cfg.cls.learning_rate
        record = summary.RunRecord(
            name=stage.name, objective="mlm", metric="macro_f1", selection="validation", seed=cfg.seed, learning_rate=lr,
            history=[], best=None, time_until_best_s=1.0, total_time_s=2.0, parameters={}, run_dir=str(workdir),
            best_model_dir=str(workdir / "best"), selected_step=1, validation={"macro_f1": 0.9 if lr == 3e-3 else 0.5},
            test={"macro_f1": 0.5},
        ).to_json()
        workdir.mkdir(parents=True)
        (workdir / "report.json").write_text(json.dumps(record))  # as a finished run leaves it
        return record

    monkeypatch.setattr(pipelines, "_train", fake_train)
    monkeypatch.setattr(report, "compare", lambda results, cfg, seeds: report.Comparison("macro_f1", "validation", seeds))
    monkeypatch.setattr(report, "write_series_report", lambda *args: None)
    monkeypatch.setattr(report, "write_stage_report", lambda *args: None)
    monkeypatch.setattr(pipelines, "_speeds", lambda *args, **kwargs: {})
    cfg = ml_collections.ConfigDict({
        "seeds": "0,1,2", "rate_choice": "first_seed", "selection": "validation", "cls_model": "predecessor",
        "cls": {"learning_rate": 1e-4, "learning_rates": "1e-4,3e-3"},
        "compression": {"num_successor_layers": 2, "depths": "2,1"},
        "series": {"stages": "cls_predecessor,cls_truncated,cls_compress"},
    })
    with caplog.at_level(logging.INFO, logger="theseus_jax"):
        pipelines.series(cfg, tmp_path)
    first = [m for m in caplog.messages if "(run " in m]
    seed_0 = [(name, lr) for name in ("cls_predecessor", "cls_truncated_L2", "cls_compress_L2", "cls_truncated_L1",
                                      "cls_compress_L1") for lr in ("0.0001", "0.003")]
    later = [(name, seed) for seed in (1, 2) for name, _ in seed_0[::2]]
    expected = [f"{name}: seed 0, learning rate {lr} (run {i} of 20)" for i, (name, lr) in enumerate(seed_0, 1)]
    expected += [f"{name}: seed {seed}, learning rate 0.003 (run {i} of 20)" for i, (name, seed) in enumerate(later, 11)]
    assert [m for m in first if "learning rate" in m] == expected

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="theseus_jax"):
        pipelines.series(cfg, tmp_path)
    reused = {re.search(r"\(run (\d+) of 20\)", m).group(1): m.split(":")[0] for m in caplog.messages if "reusing" in m}
    assert reused == {str(i): m.split(":")[0] for i, m in enumerate(expected, 1)}
    assert not [m for m in caplog.messages if "learning rate" in m]  # nothing trained again


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

    def fake_stage(stage, cfg, workdir, previous, seeds, count):
        calls.append((stage.name, list(seeds), {s: pipelines._source(stage.starts, cfg, previous, s) for s in seeds}))
        return {"per_seed": [{"seed": s, "best_model_dir": f"{stage.name}/{s}"} for s in seeds]}

    monkeypatch.setattr(pipelines, "run_stage", fake_stage)
    monkeypatch.setattr(report, "compare", lambda results, cfg, seeds: report.Comparison("macro_f1", "validation", seeds))
    monkeypatch.setattr(report, "write_series_report", lambda wd, results, comparison, cfg, speeds: reports.append(comparison.seeds))
    cfg = ml_collections.ConfigDict({"seeds": "3,1", "cls_model": "predecessor", "compression": {"depths": ""},
                                     "cls": {"learning_rate": 1e-4, "learning_rates": ""},
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
