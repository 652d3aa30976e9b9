"""Every encoder family against transformers' PyTorch model of that family.

Tiny random models of each family (weights perturbed away from their init so that a
dropped or swapped tensor shows) are saved with `save_pretrained` and loaded by our
converter: base model, MLM head and classification head must give transformers' numbers
on a padded batch (RoBERTa's position ids count from the padding index). Then a round trip:
load -> two Theseus steps (4 -> 2 layers) -> export in the source family -> transformers
loads it with no missing or unexpected weights and gives our logits.
"""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theseus_jax.compression import schedules, theseus
from theseus_jax.convert import load_hf_checkpoint, save_hf_checkpoint
from theseus_jax.models.bert import BertForMaskedLM, BertForSequenceClassification, BertModel
from theseus_jax.training import optimizer, steps

TOLERANCE = 1e-4
FAMILIES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert"]
AUTO = {"none": "AutoModel", "mlm": "AutoModelForMaskedLM", "classification": "AutoModelForSequenceClassification"}
MODULE = {"none": BertModel, "mlm": BertForMaskedLM, "classification": BertForSequenceClassification}
COMMON = dict(vocab_size=101, num_labels=3, initializer_range=0.05)


def hf_config(model_type: str):
    """A tiny 4-layer config of the family (ELECTRA with a narrower embedding)."""
    import transformers

    if model_type == "distilbert":
        return transformers.DistilBertConfig(
            dim=32, n_layers=4, n_heads=4, hidden_dim=37, max_position_embeddings=40, **COMMON
        )
    sizes = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, **COMMON)
    if model_type == "bert":
        return transformers.BertConfig(max_position_embeddings=40, type_vocab_size=2, **sizes)
    if model_type == "electra":
        return transformers.ElectraConfig(embedding_size=16, max_position_embeddings=40, type_vocab_size=2, **sizes)
    cls = transformers.RobertaConfig if model_type == "roberta" else transformers.XLMRobertaConfig
    return cls(max_position_embeddings=42, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, **sizes)


def hf_model(torch, model_type: str, head: str, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, AUTO[head]).from_config(hf_config(model_type)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def padded_batch(model_type: str) -> dict[str, np.ndarray]:
    """Three sequences of lengths 9, 6, 3, padded with the family's pad id."""
    config = hf_config(model_type)
    rng = np.random.default_rng(0)
    lengths = [9, 6, 3]
    ids = rng.integers(3, config.vocab_size, size=(3, 9))
    mask = np.array([[1] * n + [0] * (9 - n) for n in lengths])
    batch = {"input_ids": np.where(mask == 1, ids, config.pad_token_id), "attention_mask": mask}
    if getattr(config, "type_vocab_size", 1) > 1:
        batch["token_type_ids"] = np.array([[0] * (n // 2) + [1] * (9 - n // 2) for n in lengths]) * mask
    return batch


def theirs(torch, model, batch, head):
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    return (out.last_hidden_state if head == "none" else out.logits).numpy()


def ours(config, params, batch, head):
    out = MODULE[head](config).apply({"params": params}, **batch)
    return np.asarray(out.last_hidden_state if head == "none" else out)


def max_diff(a, b, batch, head):
    """Over real tokens (per-token outputs) or all rows (classification)."""
    if head == "classification":
        return float(np.max(np.abs(a - b)))
    real = batch["attention_mask"].astype(bool)
    return float(np.max(np.abs(a[real] - b[real])))


@pytest.mark.parametrize("head", ["none", "mlm", "classification"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_logits_match_transformers(torch, tmp_path, model_type, head):
    model = hf_model(torch, model_type, head)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == model_type
    config, params = load_hf_checkpoint(tmp_path, head=head)
    assert config.model_type == model_type and config.num_hidden_layers == 4
    batch = padded_batch(model_type)
    a, b = ours(config, params, batch, head), theirs(torch, model, batch, head)
    assert a.shape == b.shape
    assert max_diff(a, b, batch, head) <= TOLERANCE


def test_roberta_positions_start_after_padding_idx(torch, tmp_path):
    """Shifting the positions by one (BERT's arange) would change every output."""
    from theseus_jax.models.bert import position_ids

    hf_model(torch, "roberta", "none").save_pretrained(tmp_path)
    config, _ = load_hf_checkpoint(tmp_path, head="none")
    batch = padded_batch("roberta")
    pos = np.asarray(position_ids(jnp.asarray(batch["input_ids"]), config))
    np.testing.assert_array_equal(pos[1], [2, 3, 4, 5, 6, 7, 1, 1, 1])
    assert config.max_sequence_length == 40


def test_electra_discriminator_mlm_head_is_fresh_and_logged(torch, tmp_path, caplog):
    import transformers

    torch.manual_seed(0)
    transformers.ElectraForPreTraining(hf_config("electra")).save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="theseus_jax"):
        config, params = load_hf_checkpoint(tmp_path, head="mlm")
    assert "an ELECTRA discriminator has no MLM head" in caplog.text
    assert "generator_predictions.dense.weight" in caplog.text
    assert "discriminator_predictions.dense.weight" in caplog.text  # skipped, named
    assert params["cls"]["predictions"]["transform"]["dense"]["kernel"].shape == (32, 16)


def _two_theseus_steps(config, params, head):
    """Two training steps of Theseus Compression 4 -> 2 at p = 0.5, successors trainable."""
    params = theseus.init_theseus_params(params, config, 2)
    tx, mask = optimizer.make_optimizer(params, "successor", 1e-2)
    model = theseus.theseus_model(config, head, 2)
    step = jax.jit(steps.make_train_step(model, tx, mask, head, steps.Compression(schedules.constant_schedule(0.5), 2)))
    rng = np.random.default_rng(1)
    ids = rng.integers(3, config.vocab_size, (4, 8)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    if head == "mlm":
        batch["labels"] = np.where(rng.random(ids.shape) < 0.3, ids, -100).astype(np.int32)
    else:
        batch["labels"] = np.array([0, 1, 2, 1], np.int32)
    state = steps.create_train_state(params, tx)
    for i in range(2):
        state, _ = step(state, batch, jax.random.key(i))
    return theseus.extract_successor(config, jax.device_get(state.params))


# Each case compiles a Theseus train step (~30 s on 2 busy cores): the MLM round trips run
# with -m slow, except ELECTRA's, whose MLM head is one the source checkpoint did not have.
ROUND_TRIPS = [(f, "classification") for f in FAMILIES] + [
    pytest.param(f, "mlm", marks=[] if f == "electra" else [pytest.mark.slow]) for f in FAMILIES
]


@pytest.mark.parametrize("model_type, head", ROUND_TRIPS)
def test_compressed_export_loads_in_transformers(torch, tmp_path, model_type, head, caplog):
    import transformers

    hf_model(torch, model_type, head).save_pretrained(tmp_path / "source")
    config, params = load_hf_checkpoint(tmp_path / "source", head=head)
    succ_config, succ = _two_theseus_steps(config, params, head)
    assert succ_config.num_hidden_layers == 2
    out = save_hf_checkpoint(succ_config, succ, tmp_path / "successor")

    written = json.loads((out / "config.json").read_text())
    auto = getattr(transformers, AUTO[head])
    assert written["model_type"] == model_type
    with caplog.at_level(logging.WARNING):
        loaded, info = auto.from_pretrained(str(out), output_loading_info=True)
    assert type(loaded).__name__ == written["architectures"][0]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not [r for r in caplog.records if "weights" in r.getMessage().lower()]
    assert loaded.config.num_hidden_layers == 2
    loaded.eval()
    batch = padded_batch(model_type)
    assert max_diff(ours(succ_config, succ, batch, head), theirs(torch, loaded, batch, head), batch, head) <= TOLERANCE
    # ... and the export reads back to the same parameters.
    _, again = load_hf_checkpoint(out, head=head)
    jax.tree.map(np.testing.assert_array_equal, again, succ)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_truncation_and_layer_analysis(torch, tmp_path, model_type):
    """Truncation to 2 layers gives transformers' hidden state after layer 2; the layer
    analysis runs on the family (a model against itself: CKA and cosine 1, full agreement)."""
    from theseus_jax.analysis.layers import compare_layers

    model = hf_model(torch, model_type, "mlm")
    model.save_pretrained(tmp_path)
    config, params = load_hf_checkpoint(tmp_path, head="mlm")
    batch = padded_batch(model_type)
    with torch.no_grad():
        states = model(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_hidden_states=True).hidden_states
    short_config, short = theseus.truncate_layers(config, params, 2)
    base = {k: v for k, v in short["bert"].items() if k != "pooler"}
    hidden = BertModel(short_config, add_pooling_layer=False).apply({"params": base}, **batch).last_hidden_state
    assert max_diff(np.asarray(hidden), states[2].numpy(), batch, "none") <= TOLERANCE

    full = {**batch, "token_type_ids": batch.get("token_type_ids", np.zeros_like(batch["input_ids"]))}
    result = compare_layers((config, params), (config, params), [full])
    np.testing.assert_allclose(np.diag(result["cka"]), 1.0, atol=1e-4)
    np.testing.assert_allclose(result["cosine"], 1.0, atol=1e-5)
    assert result["mlm_agreement"] == 1.0 and result["tokens"] == 18
