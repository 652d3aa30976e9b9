"""Train steps: freezing, optimizer state, losses, compiled cost of frozen gradients."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from theseus_jax.compression import schedules, theseus
from theseus_jax.models.bert import BertForMaskedLM, BertForSequenceClassification
from theseus_jax.training import optimizer, steps

from tiny_bert import TINY

CFG = TINY


def _batch(objective, seed=0, batch=4, length=12):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, CFG.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    if objective == "mlm":
        labels = np.where(rng.random(ids.shape) < 0.3, ids, -100)
        labels[:, 0] = ids[:, 0]
        out["labels"] = labels.astype(np.int32)
    else:
        out["labels"] = np.array([0, 1, 1, 0][:batch], np.int32)
        out["example_mask"] = np.ones(batch, np.float32)
    return out


def _theseus_state(objective, trainable="successor", p=0.5, head_cls=None):
    head = {"mlm": "mlm", "classification": "classification"}[objective]
    head_cls = head_cls or {"mlm": BertForMaskedLM, "classification": BertForSequenceClassification}[objective]
    pred = head_cls(CFG).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    params = theseus.init_theseus_params(pred, CFG, 2)
    tx, mask = optimizer.make_optimizer(params, trainable, 1e-3)
    model = theseus.theseus_model(CFG, head, 2)
    step = steps.make_train_step(model, tx, mask, objective, steps.Compression(schedules.constant_schedule(p), 2))
    return steps.create_train_state(params, tx), step, mask


@pytest.mark.parametrize("objective", ["mlm", "classification"])
def test_frozen_parameters_stay_bit_identical_while_the_successor_moves(objective):
    state, step, mask = _theseus_state(objective)
    before = jax.tree.map(np.asarray, state.params)
    step = jax.jit(step)
    rng = jax.random.key(42)
    for i in range(20):
        state, metrics = step(state, _batch(objective, seed=i), rng)
    assert int(state.step) == 20
    flat_before = traverse_util.flatten_dict(before, sep="/")
    flat_after = traverse_util.flatten_dict(jax.tree.map(np.asarray, state.params), sep="/")
    flat_mask = traverse_util.flatten_dict(mask, sep="/")
    moved = [path for path in flat_before if not np.array_equal(flat_before[path], flat_after[path])]
    assert moved and all(re.search(r"encoder/successor_\d+/", path) for path in moved)
    assert all(flat_mask[path] for path in moved)
    # Every successor kernel moved (each module was replaced at least once in 20 draws at p = 0.5).
    assert all(
        any(path.startswith(f"bert/encoder/successor_{i}/") and path.endswith("kernel") for path in moved)
        for i in range(2)
    )


def test_no_optimizer_state_for_frozen_leaves():
    state, _, mask = _theseus_state("mlm")
    state_size = sum(x.size for x in jax.tree.leaves(state.opt_state))
    trainable = sum(
        x.size for x, train in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask)) if train
    )
    # Adam: first and second moments for trainable leaves only, plus step counters.
    assert trainable < sum(x.size for x in jax.tree.leaves(state.params)) / 2
    assert 2 * trainable <= state_size <= 2 * trainable + 8


def test_trainable_presets():
    state, _, _ = _theseus_state("classification")
    flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")
    for preset, expect in [
        ("successor", lambda path: "/successor_" in path),
        ("successor_embeddings_heads", lambda path: "/predecessor_" not in path),
        ("all", lambda path: "/predecessor_" not in path),
        ("all_but_word_embeddings", lambda path: "/predecessor_" not in path and "word_embeddings" not in path),
    ]:
        mask = flat(optimizer.trainable_mask(state.params, preset))
        assert all(train == expect(path) for path, train in mask.items()), preset
    mlm_state, _, _ = _theseus_state("mlm")
    mlm_head = flat(optimizer.trainable_mask(mlm_state.params, "successor_mlm_head"))
    assert all(train == ("/successor_" in path or path.startswith("cls/")) for path, train in mlm_head.items())
    assert flat(optimizer.trainable_mask(state.params, "successor_mlm_head")) == flat(optimizer.trainable_mask(state.params, "successor"))
    custom = flat(optimizer.trainable_mask(state.params, [r"^classifier/", r"predecessor_0"]))
    assert sorted(path for path, train in custom.items() if train) == ["classifier/bias", "classifier/kernel"]
    with pytest.raises(ValueError, match="unknown trainable preset"):
        optimizer.trainable_mask(state.params, "everything")
    with pytest.raises(ValueError, match="matches no parameter"):
        optimizer.trainable_mask(state.params, [r"^nothing$"])


def test_weight_decay_skips_biases_and_layer_norm():
    state, _, _ = _theseus_state("mlm")
    decay = traverse_util.flatten_dict(optimizer.decay_mask(state.params), sep="/")
    assert decay["bert/encoder/successor_0/attention/self/query/kernel"]
    assert decay["bert/embeddings/word_embeddings/embedding"]
    assert not decay["bert/encoder/successor_0/attention/self/query/bias"]
    assert not decay["bert/encoder/successor_0/output/LayerNorm/scale"]
    assert not decay["cls/predictions/bias"]


def test_learning_rate_warms_up_then_decays_linearly():
    lr = optimizer.learning_rate_schedule(1e-3, total_steps=100, warmup_steps=10)
    assert [float(lr(s)) for s in (0, 5, 10, 55, 100)] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4, 0.0])


def test_learning_rate_decays_to_exactly_zero_under_jit():
    """Jitted as in the train step: peak * (steps left) / 5, exactly 0 from the end on (issue 33:
    optax's `1 - step / 5`, with the division turned into a product by a rounded 1/5, gave
    -1.5e-11 there)."""
    lr = jax.jit(optimizer.learning_rate_schedule(1e-3, total_steps=5))
    values = [float(lr(jnp.int32(s))) for s in range(8)]
    assert values[:5] == pytest.approx([1e-3 * (5 - s) / 5 for s in range(5)])
    assert values[5:] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clipping_matches_optax_above_the_threshold_and_is_exact_below(max_norm):
    grads = {"a": jnp.array(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32), "b": jnp.arange(5.0)}
    ours, _ = optimizer.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    reference, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    for name in grads:
        if max_norm == 100.0:  # below: untouched, bit for bit
            np.testing.assert_array_equal(ours[name], grads[name])
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-6)
    assert float(optax.tree.norm(ours)) == pytest.approx(min(max_norm, float(optax.tree.norm(grads))), rel=1e-6)


def test_mlm_loss_matches_a_hand_computation():
    logits = jnp.array(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
    labels = jnp.array([[1, -100, 4], [-100, -100, 0]])
    loss, aux = steps.mlm_loss(logits, {"labels": labels})
    logp = jax.nn.log_softmax(logits)
    expected = -(logp[0, 0, 1] + logp[0, 2, 4] + logp[1, 2, 0]) / 3
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(aux["count"]) == 3


def test_classification_loss_ignores_padding_rows():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    batch = {"labels": jnp.array([0, 1, 1]), "example_mask": jnp.array([1.0, 1.0, 0.0])}
    loss, aux = steps.classification_loss(logits, batch)
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(aux["correct"]) == 2


def _dot_count(fn, *args):
    return len(re.findall(r"\bdot\(", jax.jit(fn).lower(*args).compile().as_text()))


def test_frozen_weight_gradients_are_dropped_from_the_compiled_step():
    """The masked-optimizer step compiles to as many matmuls as differentiating only the
    trainable partition, and fewer than one that keeps every gradient alive."""
    state, step, mask = _theseus_state("mlm", p=0.5)
    batch = jax.tree.map(jnp.asarray, _batch("mlm"))
    rng = jax.random.key(0)
    ours = _dot_count(step, state, batch, rng)

    model = theseus.theseus_model(CFG, "mlm", 2)
    flat_params = traverse_util.flatten_dict(state.params, sep="/")
    flat_mask = traverse_util.flatten_dict(mask, sep="/")
    train = {k: v for k, v in flat_params.items() if flat_mask[k]}
    frozen = {k: v for k, v in flat_params.items() if not flat_mask[k]}

    def loss(trainable_part, frozen_part, replace_mask):
        params = traverse_util.unflatten_dict({**trainable_part, **frozen_part}, sep="/")
        logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], replace_mask=replace_mask)
        return steps.mlm_loss(logits, batch)[0]

    replace_mask = schedules.sample_replace_mask(rng, 0.5, 2)
    split_grad = _dot_count(jax.grad(loss), train, frozen, replace_mask)
    full_grad = _dot_count(
        lambda p, m: optax.tree.norm(jax.grad(lambda q: loss({}, traverse_util.flatten_dict(q, sep="/"), m))(p)),
        state.params,
        replace_mask,
    )
    # The step's forward pass is counted in both the step and the gradient programs.
    assert ours == split_grad
    assert ours < full_grad


def test_mlm_logits_at_masked_positions_equal_the_full_logits_there():
    params = BertForMaskedLM(CFG).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    batch = _batch("mlm")
    positions = np.array([[0, 3, 3], [13, 2, 7], [0, 0, 0], [47, 25, 0]], np.int32)  # into the flattened B * L tokens
    model = BertForMaskedLM(CFG)
    full = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    gathered = model.apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], masked_positions=positions
    )
    assert positions.max() >= batch["input_ids"].shape[1]  # some point past the first row
    np.testing.assert_allclose(gathered, np.asarray(full).reshape(-1, full.shape[-1])[positions], atol=1e-6)


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_mlm_step_on_gathered_positions_equals_the_full_logits_gradient(accumulation_steps):
    """The loader's flat positions (one group per micro-batch) give the gradient of the mean
    cross entropy over the labelled tokens computed on the full [B, L, vocab] logits."""
    import dataclasses

    from theseus_jax.data.masking import gather_masked_positions

    config = dataclasses.replace(CFG, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForMaskedLM(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    batch = _batch("mlm")
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def reference_loss(p):
        logits = model.apply({"params": p}, *inputs)
        labels = batch["labels"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, np.where(labels < 0, 0, labels))
        return (losses * (labels >= 0)).sum() / (labels >= 0).sum()

    expected = jax.tree.map(lambda p, g: p - g, params, jax.grad(reference_loss)(params))
    tx, mask = optax.sgd(1.0), jax.tree.map(lambda _: True, params)
    step = steps.make_train_step(model, tx, mask, "mlm", accumulation_steps=accumulation_steps)
    gathered = dict(batch)
    gathered["masked_positions"], gathered["labels"] = gather_masked_positions(batch["labels"], accumulation_steps)
    assert gathered["labels"].size < batch["labels"].size  # fewer rows through the vocabulary projection
    state, metrics = jax.jit(step)(steps.create_train_state(params, tx), gathered, jax.random.key(1))
    assert float(metrics["count"]) == (batch["labels"] >= 0).sum()
    ours, theirs = traverse_util.flatten_dict(state.params, sep="/"), traverse_util.flatten_dict(expected, sep="/")
    assert ours.keys() == theirs.keys()
    for path in ours:
        np.testing.assert_allclose(ours[path], theirs[path], atol=2e-6, err_msg=path)
