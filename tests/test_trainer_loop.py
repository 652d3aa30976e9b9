"""The training loop's host transfers: step metrics reach the host in chunks only."""

import collections
import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theseus_jax import memory
from theseus_jax.experiments import trainer
from theseus_jax.models.bert import BertForSequenceClassification
from theseus_jax.training import optimizer

from tiny_bert import TINY


class _Loader:
    """`count` fixed random classification batches of 4 x 12 tokens (4 x 20 from batch
    `longer_from` on: a later bucket)."""

    def __init__(self, count: int, longer_from: int | None = None) -> None:
        rng = np.random.default_rng(0)
        self.data = []
        for i in range(count):
            length = 20 if longer_from is not None and i >= longer_from else 12
            ids = rng.integers(5, TINY.vocab_size, (4, length)).astype(np.int32)
            self.data.append({
                "input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
                "labels": rng.integers(0, 2, 4).astype(np.int32), "example_mask": np.ones(4, np.float32),
                "example_index": np.arange(4 * i, 4 * i + 4),
            })

    def num_batches(self, epoch: int) -> int:
        return len(self.data)

    def batches(self, epoch: int, start_batch: int = 0):
        yield from self.data[start_batch:]


def _job(log_every_steps: int, train_batches: int, learning_rate: float = 1e-3, **kwargs) -> trainer.TrainingJob:
    model = BertForSequenceClassification(TINY)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    tx, mask = optimizer.make_optimizer(params, "all", learning_rate, max_grad_norm=None)
    return trainer.TrainingJob(
        name="loop", objective="classification", model=model, params=params, tx=tx, trainable=mask,
        train_loader=_Loader(train_batches), validation_loader=_Loader(2), test_loader=_Loader(2), metric="accuracy",
        export=lambda p: (TINY, p), log_every_steps=log_every_steps, **{"epochs": 1, "checkpoint_every_steps": 1000, **kwargs},
    )


def test_metrics_reach_the_host_only_every_log_every_steps(tmp_path, monkeypatch):
    """10 steps, log_every_steps=4: three fetches (4, 4, then 2 at the epoch's end), none
    per step, and every step still in steps.jsonl."""
    fetched: list[int] = []
    device_get = jax.device_get

    def counting(tree):
        # Training metrics are the only trees carrying a gradient norm.
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        if any("grad_norm" in jax.tree_util.keystr(path) for path, _ in leaves):
            fetched.append(sum("grad_norm" in jax.tree_util.keystr(path) for path, _ in leaves))
        return device_get(tree)

    monkeypatch.setattr(jax, "device_get", counting)
    trainer.train(_job(log_every_steps=4, train_batches=10), tmp_path)
    assert fetched == [4, 4, 2]
    logged = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == list(range(1, 11))
    assert all(np.isfinite(entry["loss"]) for entry in logged)


def test_a_non_finite_step_is_named_and_never_checkpointed(tmp_path):
    """The loss turns non-finite after the first (huge) update; the fetch before the
    step-3 checkpoint finds it, names step 2 and leaves no checkpoint behind."""
    job = _job(log_every_steps=100, train_batches=10, learning_rate=1e30, checkpoint_every_steps=3)
    with pytest.raises(trainer.NonFiniteLoss, match="at step 2 "):
        trainer.train(job, tmp_path)
    saved = tmp_path / "checkpoints"
    assert not saved.exists() or not [p for p in saved.iterdir() if p.name.isdigit()]


# The loop's decisions, worked by hand. A run of 2 epochs of 4 batches (8 steps) unless said;
# no periodic evaluation, a checkpoint every 100 steps, metrics fetched every 50.
CADENCE = dict(eval_every_steps=0, checkpoint_every_steps=100, log_every_steps=50)
NOTHING = trainer.Decision(flush=False, evaluate=False, epoch_end=False, save=False, stop=False)
EPOCH_END = trainer.Decision(flush=True, evaluate=True, epoch_end=True, save=True, stop=False)


@pytest.mark.parametrize("step, batch, batches, total_steps, signal, pending, cadence, expected", [
    (1, 1, 4, 8, False, 1, {}, NOTHING),
    (4, 4, 4, 8, False, 4, {}, EPOCH_END),
    (8, 4, 4, 8, False, 4, {}, EPOCH_END),  # the run's last step is its last epoch's end
    # max_steps=5 cuts the first epoch of 11 batches: evaluate and save there; the epoch stays open.
    (5, 5, 11, 5, False, 5, {}, dataclasses.replace(EPOCH_END, epoch_end=False)),
    (13, 2, 11, 22, False, 2, {}, NOTHING),  # resumed in epoch 2: batch counts within the epoch
    (3, 3, 4, 8, False, 3, {"eval_every_steps": 3}, dataclasses.replace(NOTHING, flush=True, evaluate=True)),
    (6, 2, 4, 8, False, 2, {"eval_every_steps": 3}, dataclasses.replace(NOTHING, flush=True, evaluate=True)),
    (5, 1, 4, 8, False, 1, {"checkpoint_every_steps": 5}, dataclasses.replace(NOTHING, flush=True, save=True)),
    (3, 3, 4, 8, False, 4, {"log_every_steps": 4}, dataclasses.replace(NOTHING, flush=True)),
    (3, 3, 4, 8, False, 3, {"log_every_steps": 4}, NOTHING),
    # A signal saves the step in flight and stops; at an epoch's end after its evaluation.
    (2, 2, 4, 8, True, 2, {}, dataclasses.replace(NOTHING, flush=True, save=True, stop=True)),
    (4, 4, 4, 8, True, 4, {}, dataclasses.replace(EPOCH_END, stop=True)),
])
def test_the_loop_decides_after_each_step(step, batch, batches, total_steps, signal, pending, cadence, expected):
    assert trainer.decide(step, batch, batches, total_steps, signal, pending, **{**CADENCE, **cadence}) == expected


@pytest.mark.parametrize("count, patience, step, stops", [
    (2, 2, 6, True), (3, 2, 6, True), (1, 2, 6, False),
    (2, 2, 8, False),  # a plateau at the last step stops nothing: the run trained to its end
    (9, 0, 6, False),  # patience 0: early stopping is off
])
def test_early_stopping_needs_the_patience_and_steps_left(count, patience, step, stops):
    assert trainer.stops_early(count, patience, step, total_steps=8) is stops


@pytest.mark.parametrize("max_steps, expected", [(0, 22), (5, 5), (22, 22), (30, 22)])
def test_max_steps_cuts_the_epochs_steps_short(max_steps, expected):
    assert trainer.run_steps(_Loader(11), epochs=2, max_steps=max_steps) == expected


class _Killed(Exception):
    pass


class _KilledAt(_Loader):
    """Raises when asked for batch `at` = (epoch, batch), as a kill there would."""

    def __init__(self, count: int, at: tuple[int, int]) -> None:
        super().__init__(count)
        self.at = at

    def batches(self, epoch: int, start_batch: int = 0):
        for i in range(start_batch, len(self.data)):
            if (epoch, i) == self.at:
                raise _Killed(self.at)
            yield self.data[i]


def _steps_logged(workdir):
    return [json.loads(line)["step"] for line in (workdir / "steps.jsonl").read_text().splitlines()]


def _without_times(history):
    return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in history]


def test_max_steps_ends_the_run_mid_epoch_evaluated_tested_and_resumable(tmp_path):
    """2 epochs of 4 batches cut at max_steps=7: steps 1-7 train, validation is evaluated at
    the epoch's end (step 4) and at the stop (step 7, in epoch 2), the test split once at the
    selected step, and the last checkpoint is step 7. A run killed in epoch 2 resumes to the
    same result; a rerun of the finished run trains nothing."""
    job = lambda: _job(log_every_steps=50, train_batches=4, epochs=2, max_steps=7, checkpoint_every_steps=5)
    whole = trainer.train(job(), tmp_path / "whole")
    assert _steps_logged(tmp_path / "whole") == [1, 2, 3, 4, 5, 6, 7]
    assert [(h["epoch"], h["step"]) for h in whole.history] == [(0, 4), (1, 7)]
    assert whole.best["step"] in (4, 7) and "test" in whole.best and not whole.stopped_early
    assert [h["step"] for h in whole.history if "test" in h] == [whole.best["step"]]
    assert max(int(p.name) for p in (tmp_path / "whole" / "checkpoints").iterdir() if p.name.isdigit()) == 7
    again = trainer.train(job(), tmp_path / "whole")
    assert again.history == whole.history and _steps_logged(tmp_path / "whole") == [1, 2, 3, 4, 5, 6, 7]

    killed = job()
    killed.train_loader = _KilledAt(4, at=(1, 2))  # asked for one batch ahead: after the step-5 checkpoint
    with pytest.raises(_Killed):
        trainer.train(killed, tmp_path / "killed")
    assert _steps_logged(tmp_path / "killed") == [1, 2, 3, 4, 5]
    resumed = trainer.train(job(), tmp_path / "killed")
    assert _without_times(resumed.history) == _without_times(whole.history)
    assert _steps_logged(tmp_path / "killed") == [1, 2, 3, 4, 5, 6, 7]


def test_a_later_bucket_that_cannot_fit_the_cap_stops_before_its_first_step_with_a_checkpoint(tmp_path, monkeypatch):
    """Batches 1-3 of length 12, then 20; the step compiled for length 20 reports 1 TB of XLA
    temporaries against a 100 GB cap: the run saves step 3 and stops before step 4, naming
    the shape and the sizes (the resident size measured: above 0.1 GB); a rerun without the
    cap resumes at step 3 to the uninterrupted run's result."""
    job = lambda: dataclasses.replace(_job(log_every_steps=50, train_batches=6, epochs=1), train_loader=_Loader(6, 3))
    whole = trainer.train(job(), tmp_path / "whole")
    measured = memory.note_step_temporaries
    compiled: list[int] = []

    def second_shape_huge(analysis):
        compiled.append(measured(analysis))
        return compiled[-1] if len(compiled) == 1 else 10**12

    monkeypatch.setattr(memory, "note_step_temporaries", second_shape_huge)
    monkeypatch.setattr(memory, "_cap_bytes", 100 * 10**9)
    with pytest.raises(memory.MemoryCapExceeded) as stopped:
        trainer.train(job(), tmp_path / "capped")
    message = str(stopped.value)
    match = re.fullmatch(
        r"loop: a training step of batch shape 4 x 20 needs about (\d+\.\d\d) GB \((\d+\.\d\d) GB resident \+ "
        r"1000\.00 GB of XLA temporaries\), over max_memory_gb=100, at step 3 of 6, checkpoint saved in "
        rf"{re.escape(str(tmp_path / 'capped' / 'checkpoints'))}; lower batch_size .*", message)
    assert match and float(match[2]) > 0.1 and float(match[1]) == pytest.approx(1000 + float(match[2]), abs=0.011), message
    assert len(compiled) == 2 and compiled[0] > 0  # the first shape's own temporaries
    assert _steps_logged(tmp_path / "capped") == [1, 2, 3]
    assert [int(p.name) for p in (tmp_path / "capped" / "checkpoints").iterdir() if p.name.isdigit()] == [3]
    monkeypatch.undo()
    resumed = trainer.train(job(), tmp_path / "capped")
    assert _without_times(resumed.history) == _without_times(whole.history)
    assert _steps_logged(tmp_path / "capped") == _steps_logged(tmp_path / "whole") == [1, 2, 3, 4, 5, 6]


def test_a_peak_past_the_cap_stops_at_the_next_step_with_a_checkpoint(tmp_path, monkeypatch):
    """Every step fits the cap by its prediction, but the peak resident size read at the
    step-2 checkpoint's flush is past it (kept memory, glibc's holes): step 3 saves and stops,
    naming the peak; a rerun without the cap resumes at step 3 to the uninterrupted result."""
    job = lambda: _job(log_every_steps=50, train_batches=6, checkpoint_every_steps=2)
    whole = trainer.train(job(), tmp_path / "whole")
    monkeypatch.setattr(memory, "_cap_bytes", 1000 * 10**9)
    monkeypatch.setattr(memory, "peak_rss_bytes", lambda: 2000 * 10**9)
    with pytest.raises(memory.MemoryCapExceeded, match=re.escape(
            "loop: resident memory reached 2000.00 GB, over max_memory_gb=1000, at step 3 of 6, checkpoint saved in "
            f"{tmp_path / 'capped' / 'checkpoints'}; lower batch_size")):
        trainer.train(job(), tmp_path / "capped")
    assert _steps_logged(tmp_path / "capped") == [1, 2, 3]
    assert sorted(int(p.name) for p in (tmp_path / "capped" / "checkpoints").iterdir() if p.name.isdigit()) == [2, 3]
    monkeypatch.undo()
    resumed = trainer.train(job(), tmp_path / "capped")
    assert _without_times(resumed.history) == _without_times(whole.history)
    assert _steps_logged(tmp_path / "capped") == [1, 2, 3, 4, 5, 6]


def _compiled(run) -> list[str]:
    """The names of the functions XLA compiled while `run()` ran (JAX's compile events)."""
    names: list[str] = []

    def listen(event: str, duration: float, **meta) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(meta.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        run()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return names


def test_dropping_jaxs_staging_caches_compiles_no_step_shape_twice(tmp_path, monkeypatch, without_compilation_cache):
    """Three length-12 batches, then three of length 20, two epochs, evaluations and the test
    pass, each run from empty caches: with JAX's staging caches dropped (after loading and
    after each new shape's first step) the training and evaluation steps compile as often as
    without dropping (once per shape), and so does everything else, eager operations too;
    each drop empties JAX's lowering cache."""
    from jax._src import pjit

    job = lambda: dataclasses.replace(_job(log_every_steps=50, train_batches=6, epochs=2), train_loader=_Loader(6, 3))
    drops: list[int] = []
    drop = memory.drop_staging_caches

    def counted_drop() -> None:
        drop()
        drops.append(pjit._pjit_lower.cache_info().currsize)

    monkeypatch.setattr(memory, "drop_staging_caches", counted_drop)
    jax.clear_caches()
    dropping = collections.Counter(_compiled(lambda: trainer.train(job(), tmp_path / "dropping")))
    monkeypatch.setattr(memory, "drop_staging_caches", lambda: None)
    jax.clear_caches()
    keeping = collections.Counter(_compiled(lambda: trainer.train(job(), tmp_path / "keeping")))
    assert dropping["jit(train_step)"] == keeping["jit(train_step)"] == 2
    assert dropping["jit(eval_step)"] == keeping["jit(eval_step)"] >= 1
    assert dropping == keeping
    # after loading and after the two new shapes' first steps
    assert len(drops) == 3 and set(drops) == {0}


@pytest.mark.parametrize("remaining, per_step, said", [
    (1492, 1.41, "35 min of steps to the cap"),  # 2,103.7 s
    (3000, 1.5, "1 h 15 min of steps to the cap"),  # 4,500 s
    (7200, 1.0, "2 h 00 min of steps to the cap"),
    (10, 1.0, "under a minute of steps to the cap"),  # 10 s rounds to 0 min
    (0, 1.3, "at the cap"),
])
def test_time_to_cap_in_the_log_line(remaining, per_step, said):
    assert trainer.time_to_cap(remaining, per_step) == said
