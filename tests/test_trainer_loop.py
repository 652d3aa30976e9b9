"""The training loop's host transfers: step metrics reach the host in chunks only."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theseus_jax.experiments import trainer
from theseus_jax.models.bert import BertForSequenceClassification
from theseus_jax.training import optimizer

from tiny_bert import TINY


class _Loader:
    """`count` fixed random classification batches of 4 x 12 tokens."""

    def __init__(self, count: int) -> None:
        rng = np.random.default_rng(0)
        self.data = []
        for i in range(count):
            ids = rng.integers(5, TINY.vocab_size, (4, 12)).astype(np.int32)
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
        train_loader=_Loader(train_batches), validation_loader=_Loader(2), test_loader=_Loader(2), epochs=1, metric="accuracy",
        export=lambda p: (TINY, p), log_every_steps=log_every_steps, **{"checkpoint_every_steps": 1000, **kwargs},
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
