"""Task distillation: the loss against torch, alpha 0 = plain fine-tuning, teacher logits
against transformers and reused on resume, early stopping and the replacement phases."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from theseus_jax.data.batching import BatchLoader
from theseus_jax.data.encoding import Encoded
from theseus_jax.experiments import pipelines, teacher
from theseus_jax.experiments.trainer import plateau_count, replacing_at
from theseus_jax.models.bert import HEADS
from theseus_jax.training import optimizer, steps
from theseus_jax.training.distillation import Distillation
from tiny_bert import TINY

REPO = Path(__file__).resolve().parents[1]


def test_distillation_loss_and_gradient_equal_torch(torch):
    """(1 - a) CE + a T^2 KL(teacher || student) on a one-layer model, padding row ignored."""
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    teacher_logits = 3 * rng.normal(size=(5, 3)).astype(np.float32)
    labels, mask = np.array([0, 2, 1, 1, 0], np.int32), np.array([1, 1, 1, 1, 0], np.float32)
    alpha, temperature = 0.3, 2.5
    batch = {"labels": labels, "example_mask": mask, "teacher_logits": teacher_logits}

    def loss(w):
        return steps.classification_loss(jnp.asarray(x) @ w, batch, Distillation(alpha, temperature))[0]

    ours, ours_grad = jax.value_and_grad(loss)(jnp.asarray(w))

    w_t = torch.tensor(w, requires_grad=True)
    logits = torch.tensor(x) @ w_t
    ce = F.cross_entropy(logits, torch.tensor(labels, dtype=torch.long), reduction="none")
    kl = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(torch.tensor(teacher_logits) / temperature, -1),
                  log_target=True, reduction="none").sum(-1)
    per_example = (1 - alpha) * ce + alpha * temperature**2 * kl
    reference = (per_example * torch.tensor(mask)).sum() / torch.tensor(mask).sum()
    reference.backward()
    np.testing.assert_allclose(float(ours), reference.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ours_grad), w_t.grad.numpy(), rtol=1e-4, atol=1e-6)


def _tiny_state_and_batch():
    model = HEADS["classification"](TINY.replace(num_labels=2))
    rng = np.random.default_rng(1)
    ids = rng.integers(1, TINY.vocab_size, (4, 12)).astype(np.int32)
    params = model.init(jax.random.key(0), jnp.asarray(ids))["params"]
    batch = {
        "input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
        "labels": np.array([0, 1, 1, 0], np.int32), "example_mask": np.ones(4, np.float32),
        "teacher_logits": rng.normal(size=(4, 2)).astype(np.float32),
    }
    return model, params, batch


def test_alpha_zero_is_todays_step_exactly():
    model, params, batch = _tiny_state_and_batch()
    tx, mask = optimizer.make_optimizer(params, "all", 1e-3)
    results = []
    for distillation in (None, Distillation(0.0, 4.0)):
        step = jax.jit(steps.make_train_step(model, tx, mask, "classification", distillation=distillation))
        state, metrics = step(steps.create_train_state(params, tx), batch, jax.random.key(3))
        results.append((jax.device_get(state.params), float(metrics["loss"])))
    (plain, plain_loss), (zero, zero_loss) = results
    assert plain_loss == zero_loss
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), plain, zero)


def test_distillation_changes_the_step_when_alpha_is_positive():
    model, params, batch = _tiny_state_and_batch()
    tx, mask = optimizer.make_optimizer(params, "all", 1e-3)
    losses = [
        float(jax.jit(steps.make_train_step(model, tx, mask, "classification", distillation=d))(
            steps.create_train_state(params, tx), batch, jax.random.key(3))[1]["loss"])
        for d in (None, Distillation(1.0, 1.0))
    ]
    # alpha 1: the loss is the KL to the teacher alone, which differs from the CE to the labels.
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)


def test_teacher_logits_equal_transformers_and_are_reused(tmp_path, torch, make_hf_model, tiny_hf_config):
    from theseus_jax.convert import load_hf_checkpoint

    hf = make_hf_model("BertForSequenceClassification")
    hf.save_pretrained(tmp_path / "teacher")
    config, params = load_hf_checkpoint(tmp_path / "teacher", head="classification", num_labels=3)
    rng = np.random.default_rng(0)
    ids = [rng.integers(1, tiny_hf_config.vocab_size, n).astype(np.int32) for n in (5, 9, 3, 12, 7)]
    loader = BatchLoader(Encoded(ids, np.array([len(x) for x in ids]), 16), np.zeros(5, np.int32), 2, buckets=(16,), seed=4)
    model = HEADS["classification"](config)
    run = tmp_path / "run"
    loads = []
    load = lambda: loads.append(1) or (model, params)  # the teacher's weights, loaded only to compute
    logits = teacher.stored_or_computed(run, str(tmp_path / "teacher"), load, loader)
    with torch.no_grad():
        expected = np.stack([hf(torch.tensor(x[None], dtype=torch.long)).logits[0].numpy() for x in ids])
    np.testing.assert_allclose(logits, expected, atol=2e-5)

    # Resumed: read back, no teacher pass; another teacher: computed again.
    stamp = (run / teacher.FILE).stat().st_mtime_ns
    calls = []
    original = teacher.compute
    teacher.compute = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        np.testing.assert_array_equal(teacher.stored_or_computed(run, str(tmp_path / "teacher"), load, loader), logits)
        assert calls == [] and loads == [1] and (run / teacher.FILE).stat().st_mtime_ns == stamp
        teacher.stored_or_computed(run, str(tmp_path / "other"), load, loader)
        assert calls == [1]
    finally:
        teacher.compute = original

    # Each batch carries its rows' teacher logits, in the loader's (shuffled) order.
    for batch in teacher.WithTeacherLogits(loader, logits).batches(1):
        real = batch["example_index"] >= 0
        np.testing.assert_array_equal(batch["teacher_logits"][real], logits[batch["example_index"][real]])


def test_early_stopping_counts_evaluations_without_improvement():
    """Validation macro F1 over evaluations; patience 2 stops at the second evaluation in a
    row that does not beat the best so far by more than min_delta."""
    values, count, best, stops = [0.50, 0.60, 0.60, 0.59, 0.62, 0.625, 0.621, 0.61], 0, None, []
    for value in values:
        count = plateau_count(count, "macro_f1", value, best, min_delta=0.01)
        best = value if best is None or value > best else best
        stops.append(count >= 2)
    # 0.60 (= best), 0.59: no gain -> stop at the 4th; 0.62 resets; 0.625 and 0.621 gain < 0.01.
    assert stops == [False, False, False, True, False, False, True, True]
    # Perplexity: lower is better.
    assert plateau_count(3, "perplexity", 9.0, 10.0, 0.5) == 0 and plateau_count(0, "perplexity", 9.8, 10.0, 0.5) == 1


def test_early_stopping_waits_for_the_end_of_the_replacement_phase():
    """A Theseus run whose p reaches 1 at step 40 (of 100), evaluated every 10 steps with a flat
    validation metric: patience 2 counts only the evaluations from step 40 on."""
    compression = steps.Compression(pipelines._schedule(_compression(replacing_steps=40), 100, 10), 2)
    values = [0.5, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]  # at steps 10, 20, ..., 70
    count, best, stops = 0, None, []
    for step, value in zip(range(10, 80, 10), values):
        count = plateau_count(count, "macro_f1", value, best, 0.0, replacing=replacing_at(compression, step))
        best = value if best is None or value > best else best
        stops.append(count >= 2)
    # A plain run would stop at step 40 (no gain at steps 30 and 40 over the 0.7 of step 20);
    # here step 30 (p < 1) does not count and step 40 (p = 1) does: the second is step 50.
    assert [replacing_at(compression, s) for s in (39, 40)] == [True, False]
    assert stops == [False, False, False, False, True, True, True]
    assert not replacing_at(None, 0)


def _compression(**fields):
    c = {"schedule": "curriculum", "starting_rate": 0.1, "ratio_replacement_changes": 0.85, "constant_rate": 0.5,
         "replacing_steps": 0, "replacing_epochs": 0.0}
    return ml_collections.ConfigDict({"compression": {**c, **fields}})


@pytest.mark.parametrize("fields, total, expected", [
    # Curriculum reaching 1 at replacing_steps = 40 of 400 steps: p = 0.1 + 0.9 s / 40, then 1.
    ({"replacing_steps": 40}, 400, {0: 0.1, 20: 0.55, 39: 0.1 + 0.9 * 39 / 40, 40: 1.0, 399: 1.0}),
    # Curriculum reaching 1 at 85% of 200 steps (170).
    ({}, 200, {0: 0.1, 85: 0.55, 169: 0.1 + 0.9 * 169 / 170, 170: 1.0, 199: 1.0}),
    # The published constant example: p = 0.5 for 2,500 steps, then 1.
    ({"schedule": "constant", "replacing_steps": 2500}, 10000, {0: 0.5, 2499: 0.5, 2500: 1.0, 9999: 1.0}),
])
def test_replacement_phase_then_the_successor_alone(fields, total, expected):
    schedule = pipelines._schedule(_compression(**fields), total, 10)
    assert {s: float(schedule(jnp.asarray(s))) for s in expected} == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("fields, expected", [
    # b = 0.1, 10 batches an epoch, 1.5 epochs: the phase ends at step 15, slope 0.9 / 15 = 0.06.
    ({"replacing_epochs": 1.5}, {0: 0.1, 7: 0.1 + 7 * 0.06, 14: 0.1 + 14 * 0.06, 15: 1.0, 20: 1.0}),
    # A constant p of 0.5 switches to 1 after 1.5 epochs, at step 15.
    ({"schedule": "constant", "replacing_epochs": 1.5}, {0: 0.5, 7: 0.5, 14: 0.5, 15: 1.0, 20: 1.0}),
])
def test_replacement_phase_in_epochs_by_hand(fields, expected):
    schedule = pipelines._schedule(_compression(**fields), 60, 10)
    assert {s: float(schedule(jnp.asarray(s))) for s in expected} == pytest.approx(expected, rel=1e-6)


def test_the_recipe_in_epochs_is_the_step_schedule_it_replaced():
    """configs/germeval_e5_recipe.py now ends its phase after 2 epochs: on GermEval 2018 (141
    batches an epoch, 6 epochs) every step's p is that of the former replacing_steps = 282."""
    from configs.germeval_e5_recipe import get_config

    recipe = get_config()
    assert recipe.compression.replacing_steps == 0
    former = ml_collections.ConfigDict(recipe.to_dict())
    former.compression.replacing_steps, former.compression.replacing_epochs = 282, 0.0
    batches, total = 141, 6 * 141
    now, before = pipelines._schedule(recipe, total, batches), pipelines._schedule(former, total, batches)
    everything = jnp.arange(total)
    np.testing.assert_array_equal(np.asarray(jax.vmap(now)(everything)), np.asarray(jax.vmap(before)(everything)))
    assert float(now(281)) < 1.0 and float(now(282)) == 1.0


def test_distilled_truncated_run_killed_and_resumed_reuses_the_teacher_logits(tmp_path, germeval_tsv, torch):
    """launch.py: vanilla KD (the truncated model learning from a teacher folder), killed
    (SIGTERM) after step 6 and rerun: the stored teacher logits are read back, not recomputed."""
    import transformers

    transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=64, num_labels=2)).save_pretrained(tmp_path / "teacher")
    workdir = tmp_path / "run"
    command = [
        sys.executable, str(REPO / "launch.py"), f"--config={REPO / 'tests' / 'tiny_config.py'}", f"--workdir={workdir}",
        f"--config.cls.data.train_path={germeval_tsv}", "--config.pipeline=cls_baseline", "--config.cls_model=truncated",
        "--config.cls.epochs=1", "--config.checkpoint_every_steps=4", "--config.distillation.alpha=0.5",
        "--config.distillation.temperature=2.0", f"--config.distillation.teacher={tmp_path / 'teacher'}",
    ]
    killed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "THESEUS_KILL_AT": "train_step:6:TERM"})
    assert killed.returncode == 143, killed.stderr[-2000:]
    # Without a terminal (no progress bar) the log carries the progress: step, total, loss, speed,
    # and the time to the cap (7 steps of a tiny model).
    assert re.search(r"cls_baseline: epoch 1, step 4 of 11, loss \d+\.\d{4}, \d+\.\d\d s/step "
                     r"\(under a minute of steps to the cap\)", killed.stderr)
    stored = workdir / teacher.FILE
    assert stored.exists() and not (workdir / "report.json").exists()
    stamp = stored.stat().st_mtime_ns
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "teacher logits: reusing" in resumed.stderr and "resuming at step 6" in resumed.stderr
    assert stored.stat().st_mtime_ns == stamp
    report = json.loads((workdir / "report.json").read_text())
    assert report["distillation"] == {"alpha": 0.5, "temperature": 2.0, "teacher": str(tmp_path / "teacher")}
    assert report["parameters"]["exported_layers"] == 2
