"""Theseus engine: module replacement, initialisation, extraction, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theseus_jax.compression import schedules, theseus
from theseus_jax.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertLayer,
    BertModel,
    attention_bias,
)

from tiny_bert import TINY

CFG = TINY


def _inputs():
    ids = jax.random.randint(jax.random.key(1), (3, 9), 1, CFG.vocab_size)
    mask = jnp.array([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7])
    types = jnp.array([[0] * 5 + [1] * 4] * 3)
    return ids, mask, types


def _predecessor(head_cls, seed=0):
    ids, _, _ = _inputs()
    return head_cls(CFG).init(jax.random.key(seed), ids)["params"]


def _perturbed(params, seed):
    """Distinct weights everywhere, so successor copies differ from their sources after training."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("head, head_cls", [("mlm", BertForMaskedLM), ("classification", BertForSequenceClassification)])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_all_predecessor_mask_equals_the_predecessor(head, head_cls, n):
    pred = _predecessor(head_cls)
    params = theseus.init_theseus_params(pred, CFG, n, init_offset=0)
    params = _perturbed(params, 5)  # successor no longer a copy: must not influence the output
    ids, mask, types = _inputs()
    ref = head_cls(CFG).apply({"params": theseus.extract_predecessor(CFG, params)[1]}, ids, mask, types)
    out = theseus.theseus_model(CFG, head, n).apply(
        {"params": params}, ids, mask, types, replace_mask=jnp.zeros(n, bool)
    )
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head, head_cls", [("mlm", BertForMaskedLM), ("classification", BertForSequenceClassification)])
def test_all_successor_mask_and_inference_equal_the_extracted_successor(head, head_cls):
    params = _perturbed(theseus.init_theseus_params(_predecessor(head_cls), CFG, 2), 6)
    ids, mask, types = _inputs()
    succ_cfg, succ_params = theseus.extract_successor(CFG, params)
    assert succ_cfg.num_hidden_layers == 2
    ref = head_cls(succ_cfg).apply({"params": succ_params}, ids, mask, types)
    model = theseus.theseus_model(CFG, head, 2)
    replaced = model.apply({"params": params}, ids, mask, types, replace_mask=jnp.ones(2, bool))
    inference = model.apply({"params": params}, ids, mask, types)
    np.testing.assert_allclose(replaced, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(inference, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("replace", [(True, False), (False, True)])
def test_a_fixed_mask_runs_exactly_the_expected_layers(replace):
    """Module outputs equal a hand composition of the chosen layers."""
    params = _perturbed(theseus.init_theseus_params(_predecessor(BertModel), CFG, 2), 7)
    ids, mask, types = _inputs()
    out = theseus.theseus_model(CFG, "none", 2).apply(
        {"params": params}, ids, mask, types, output_hidden_states=True, replace_mask=jnp.array(replace)
    )
    embedded = BertModel(CFG).apply(
        {"params": theseus.extract_predecessor(CFG, params)[1]}, ids, mask, types, output_hidden_states=True
    ).hidden_states[0]
    layer, bias, enc = BertLayer(CFG), attention_bias(mask), params["encoder"]
    hidden = embedded
    expected = [hidden]
    for i, use_successor in enumerate(replace):
        names = [f"successor_{i}"] if use_successor else [f"predecessor_{2 * i}", f"predecessor_{2 * i + 1}"]
        for name in names:
            hidden = layer.apply({"params": enc[name]}, hidden, bias)
        expected.append(hidden)
    assert len(out.hidden_states) == 3
    for got, want in zip(out.hidden_states, expected):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_the_choice_is_a_conditional_in_the_compiled_program():
    """One XLA `conditional` per module: only the taken branch runs."""
    params = theseus.init_theseus_params(_predecessor(BertModel), CFG, 2)
    ids, mask, types = _inputs()
    model = theseus.theseus_model(CFG, "none", 2)
    fn = jax.jit(lambda p, m: model.apply({"params": p}, ids, mask, types, replace_mask=m).last_hidden_state)
    assert fn.lower(params, jnp.array([True, False])).compile().as_text().count("conditional(") == 2


def test_nan_weights_in_the_branch_not_taken_do_not_reach_the_output():
    params = theseus.init_theseus_params(_predecessor(BertModel), CFG, 2)
    poison = lambda tree: jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), tree)
    params["encoder"]["predecessor_0"] = poison(params["encoder"]["predecessor_0"])
    params["encoder"]["successor_1"] = poison(params["encoder"]["successor_1"])
    ids, mask, types = _inputs()
    model = theseus.theseus_model(CFG, "none", 2)
    run = jax.jit(lambda p, m: model.apply({"params": p}, ids, mask, types, replace_mask=m).last_hidden_state)
    assert np.isfinite(np.asarray(run(params, jnp.array([True, False])))).all()
    assert np.isnan(np.asarray(run(params, jnp.array([False, True])))).all()


def test_gradients_flow_to_the_chosen_branch_only():
    params = _perturbed(theseus.init_theseus_params(_predecessor(BertForSequenceClassification), CFG, 2), 8)
    ids, mask, types = _inputs()
    model = theseus.theseus_model(CFG, "classification", 2)

    def loss(p):
        logits = model.apply({"params": p}, ids, mask, types, replace_mask=jnp.array([True, False]))
        return jax.nn.log_softmax(logits)[:, 1].sum()

    grads = jax.grad(loss)(params)["bert"]["encoder"]
    norm = lambda tree: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))
    assert norm(grads["successor_0"]) > 0
    assert norm(grads["predecessor_2"]) > 0 and norm(grads["predecessor_3"]) > 0
    assert norm(grads["predecessor_0"]) == 0 and norm(grads["predecessor_1"]) == 0
    assert norm(grads["successor_1"]) == 0


@pytest.mark.parametrize(
    "n_pred, n_succ, offset, expected",
    [
        (12, 6, 0, [0, 2, 4, 6, 8, 10]),
        (12, 6, 1, [1, 3, 5, 7, 9, 11]),
        (12, 4, 2, [2, 5, 8, 11]),
        (12, 3, 0, [0, 4, 8]),
        (6, 2, 1, [1, 4]),
        (12, 6, "original", [0, 1, 2, 3, 4, 5]),
    ],
)
def test_successor_initialisation_sources(n_pred, n_succ, offset, expected):
    assert theseus.successor_sources(n_pred, n_succ, offset) == expected


@pytest.mark.parametrize("offset", [2, -1, "upper", 1.0])
def test_bad_init_offset_is_refused(offset):
    with pytest.raises(ValueError, match="init_offset"):
        theseus.successor_sources(12, 6, offset)


def test_indivisible_layer_counts_are_refused():
    with pytest.raises(ValueError, match="cannot split 12 predecessor layers into 5"):
        theseus.theseus_model(CFG.replace(num_hidden_layers=12), "mlm", 5)


def test_successor_copies_its_source_layer():
    pred = _predecessor(BertForMaskedLM)
    params = theseus.init_theseus_params(pred, CFG, 2, init_offset=1)
    for i, source in enumerate([1, 3]):
        for a, b in zip(jax.tree.leaves(params["bert"]["encoder"][f"successor_{i}"]), jax.tree.leaves(pred["bert"]["encoder"][f"layer_{source}"])):
            np.testing.assert_array_equal(a, b)


def test_successor_copies_its_source_layer_from_other_params():
    """successor_params (e.g. the pretrained checkpoint) feed the successor; the predecessor,
    embeddings and heads stay those of the model being compressed."""
    pred, other = _predecessor(BertForSequenceClassification, 0), _predecessor(BertForSequenceClassification, 1)
    params = theseus.init_theseus_params(pred, CFG, 2, init_offset=1, successor_params=other)
    encoder = params["bert"]["encoder"]
    for i, source in enumerate([1, 3]):
        for a, b in zip(jax.tree.leaves(encoder[f"successor_{i}"]), jax.tree.leaves(other["bert"]["encoder"][f"layer_{source}"])):
            np.testing.assert_array_equal(a, b)
    for j in range(CFG.num_hidden_layers):
        for a, b in zip(jax.tree.leaves(encoder[f"predecessor_{j}"]), jax.tree.leaves(pred["bert"]["encoder"][f"layer_{j}"])):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(params["classifier"]["kernel"], pred["classifier"]["kernel"])
    # A plain BertModel's parameters (no `bert` scope) serve as well.
    plain = BertModel(CFG).init(jax.random.key(2), _inputs()[0])["params"]
    params = theseus.init_theseus_params(pred, CFG, 2, successor_params=plain)
    np.testing.assert_array_equal(params["bert"]["encoder"]["successor_1"]["output"]["dense"]["kernel"], plain["encoder"]["layer_2"]["output"]["dense"]["kernel"])


def test_successor_params_of_another_shape_are_refused():
    wider = BertModel(CFG.replace(intermediate_size=CFG.intermediate_size + 1)).init(jax.random.key(2), _inputs()[0])["params"]
    with pytest.raises(ValueError, match="differ in shape from the predecessor's"):
        theseus.init_theseus_params(_predecessor(BertForSequenceClassification), CFG, 2, successor_params=wider)


def test_truncated_baseline_keeps_the_bottom_layers():
    pred = _predecessor(BertForSequenceClassification)
    cfg, params = theseus.truncate_layers(CFG, pred, 2)
    assert cfg.num_hidden_layers == 2
    assert sorted(params["bert"]["encoder"]) == ["layer_0", "layer_1"]
    np.testing.assert_array_equal(
        params["bert"]["encoder"]["layer_1"]["output"]["dense"]["kernel"],
        pred["bert"]["encoder"]["layer_1"]["output"]["dense"]["kernel"],
    )


def test_compression_ratio_of_bert_base_12_to_6():
    """Hand count for bert-base: embeddings 23,837,184 (30522*768 + 512*768 + 2*768 + 2*768),
    7,087,872 per layer, pooler 590,592; 12 layers -> 109,482,240, 6 layers -> 66,955,008."""
    base = BertConfig()
    ids = jnp.zeros((1, 4), jnp.int32)
    shapes = lambda cfg: jax.eval_shape(lambda: BertModel(cfg).init(jax.random.key(0), ids)["params"])
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    assert count(shapes(base)) == 109_482_240
    assert count(shapes(base.replace(num_hidden_layers=6))) == 66_955_008
    ratio = count(shapes(base)) / count(shapes(base.replace(num_hidden_layers=6)))
    assert ratio == pytest.approx(1.635, abs=1e-3)


def test_compression_ratio_from_params():
    pred = _predecessor(BertForSequenceClassification)
    params = theseus.init_theseus_params(pred, CFG, 2)
    _, succ = theseus.extract_successor(CFG, params)
    per_layer = theseus.count_params(pred["bert"]["encoder"]["layer_0"])
    assert theseus.count_params(pred) - theseus.count_params(succ) == 2 * per_layer
    assert theseus.compression_ratio(pred, succ) == theseus.count_params(pred) / theseus.count_params(succ)


# --- schedules -------------------------------------------------------------------------


def test_curriculum_starts_at_b_and_reaches_one_at_the_given_share():
    sched = schedules.curriculum_schedule(0.1, total_steps=1000, ratio_replacement_changes=0.85)
    assert float(sched(0)) == pytest.approx(0.1)
    assert float(sched(425)) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)
    assert float(sched(849)) < 1.0
    assert float(sched(850)) == pytest.approx(1.0)
    assert float(sched(999)) == 1.0


def test_curriculum_with_explicit_slope():
    sched = schedules.curriculum_schedule(0.3, slope=0.01)
    assert [round(float(sched(s)), 6) for s in (0, 10, 70, 100)] == [0.3, 0.4, 1.0, 1.0]


def test_constant_schedule_switches_to_one_after_replacing_steps():
    sched = schedules.constant_schedule(0.5, replacing_steps=10)
    assert [float(sched(s)) for s in (0, 9, 10, 11)] == [0.5, 0.5, 1.0, 1.0]
    assert float(schedules.constant_schedule(0.7)(10**6)) == pytest.approx(0.7)


def test_schedule_is_traced_not_recompiled():
    sched = schedules.curriculum_schedule(0.1, total_steps=100)
    traces = []

    @jax.jit
    def p_of(step):
        traces.append(1)
        return sched(step)

    values = [float(p_of(jnp.int32(s))) for s in range(0, 100, 10)]
    assert len(traces) == 1
    assert values == sorted(values)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.85])
def test_replacement_frequency_matches_p(p):
    draws = jax.vmap(lambda k: schedules.sample_replace_mask(k, p, 6))(jax.random.split(jax.random.key(0), 2000))
    draws = np.asarray(draws, dtype=float)
    se = np.sqrt(p * (1 - p) / draws.size)
    assert abs(draws.mean() - p) < 3 * se
    for module in range(6):  # per module too
        se_m = np.sqrt(p * (1 - p) / 2000)
        assert abs(draws[:, module].mean() - p) < 4 * se_m


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="starting_rate"):
        schedules.curriculum_schedule(1.5, total_steps=10)
    with pytest.raises(ValueError, match="exactly one"):
        schedules.curriculum_schedule(0.1)
    with pytest.raises(ValueError, match="ratio_replacement_changes"):
        schedules.curriculum_schedule(0.1, total_steps=10, ratio_replacement_changes=0.0)


class _Stop(Exception):
    """Ends a pipeline once it has built its Theseus parameters."""


@pytest.mark.parametrize("successor_init", ["predecessor", "pretrained"])
def test_cls_compress_takes_successor_layers_from_the_configured_source(tmp_path, monkeypatch, germeval_tsv, successor_init):
    """Compressing a fine-tuned checkpoint: `compression.successor_init=pretrained` copies the
    successor from model.path (what the checkpoint was fine-tuned from), the default from the
    checkpoint itself."""
    from theseus_jax.convert import save_hf_checkpoint
    from theseus_jax.experiments import pipelines
    from tiny_config import get_config

    cfg = get_config()
    cfg.cls.data.train_path = str(germeval_tsv)
    cfg.compression.successor_init = successor_init
    fine_tuned = pipelines.load_model(cfg, "classification")
    save_hf_checkpoint(fine_tuned.config, _perturbed(fine_tuned.params, 3), tmp_path / "fine_tuned")
    seen = {}

    def capture(params, config, n, offset, successor_params=None):
        seen.update(params=params, successor_params=successor_params)
        raise _Stop

    monkeypatch.setattr(theseus, "init_theseus_params", capture)
    with pytest.raises(_Stop):
        pipelines._compress(cfg, tmp_path / "run", "classification", "cls_compress", str(tmp_path / "fine_tuned"))
    predecessor_layer = seen["params"]["bert"]["encoder"]["layer_0"]["output"]["dense"]["kernel"]
    pretrained_layer = pipelines.load_model(cfg, "none").params["encoder"]["layer_0"]["output"]["dense"]["kernel"]
    assert np.abs(predecessor_layer - pretrained_layer).max() > 0.01  # the fine-tuned checkpoint was loaded
    if successor_init == "predecessor":
        assert seen["successor_params"] is None
    else:
        np.testing.assert_array_equal(seen["successor_params"]["encoder"]["layer_0"]["output"]["dense"]["kernel"], pretrained_layer)


def test_a_pretrained_source_of_another_shape_is_a_user_error(tmp_path, germeval_tsv):
    from theseus_jax.convert import save_hf_checkpoint
    from theseus_jax.errors import UserError
    from theseus_jax.experiments import pipelines
    from tiny_config import get_config

    cfg = get_config()
    cfg.cls.data.train_path = str(germeval_tsv)
    cfg.compression.successor_init = "pretrained"
    other = cfg.model.random_config.intermediate_size + 8
    wider = CFG.replace(hidden_size=cfg.model.random_config.hidden_size, intermediate_size=other, num_hidden_layers=4)
    params = BertForSequenceClassification(wider).init(jax.random.key(0), _inputs()[0] % wider.vocab_size)["params"]
    save_hf_checkpoint(wider, params, tmp_path / "fine_tuned")
    with pytest.raises(UserError, match="successor_init='pretrained'.*differ in shape.*use 'predecessor'"):
        pipelines._compress(cfg, tmp_path / "run", "classification", "cls_compress", str(tmp_path / "fine_tuned"))
