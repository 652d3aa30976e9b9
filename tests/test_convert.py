"""Checkpoint conversion: name mapping, layouts, round trips through transformers, errors."""

import json
import logging

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from theseus_jax import convert
from theseus_jax.convert import flax_to_hf, hf_to_flax, load_hf_checkpoint, save_hf_checkpoint
from theseus_jax.errors import CheckpointError
from theseus_jax.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel

ARCH = {"mlm": "BertForMaskedLM", "classification": "BertForSequenceClassification"}
MODULE = {"mlm": BertForMaskedLM, "classification": BertForSequenceClassification}


def _logits(torch, model, batch):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()


def _rewrite(folder, change):
    """Applies `change(tensors) -> tensors` to a saved checkpoint's safetensors file."""
    file = folder / "model.safetensors"
    save_file(change(load_file(str(file))), str(file), metadata={"format": "pt"})


# --- The mapping ------------------------------------------------------------------


def test_mapping_table():
    names = {
        "bert.embeddings.word_embeddings.weight": ("bert", "embeddings", "word_embeddings", "embedding"),
        "bert.embeddings.LayerNorm.weight": ("bert", "embeddings", "LayerNorm", "scale"),
        "bert.encoder.layer.11.attention.self.query.weight": (
            "bert", "encoder", "layer_11", "attention", "self", "query", "kernel"),
        "encoder.layer.0.output.LayerNorm.bias": ("encoder", "layer_0", "output", "LayerNorm", "bias"),
        "cls.predictions.bias": ("cls", "predictions", "bias"),
        "cls.predictions.transform.dense.weight": ("cls", "predictions", "transform", "dense", "kernel"),
        "classifier.weight": ("classifier", "kernel"),
    }
    weight = np.arange(6.0).reshape(2, 3)
    flat = hf_to_flax({name: weight for name in names})
    assert set(flat) == set(names.values())
    np.testing.assert_array_equal(flat[names["classifier.weight"]], weight.T)
    np.testing.assert_array_equal(flat[names["bert.embeddings.LayerNorm.weight"]], weight)
    back = flax_to_hf(flat)
    assert set(back) == set(names)
    for name in names:
        np.testing.assert_array_equal(back[name], weight)


def test_gamma_beta_and_duplicates():
    flat = hf_to_flax({"embeddings.LayerNorm.gamma": np.ones(2), "embeddings.LayerNorm.beta": np.zeros(2)})
    assert set(flat) == {("embeddings", "LayerNorm", "scale"), ("embeddings", "LayerNorm", "bias")}
    with pytest.raises(ValueError, match="LayerNorm.gamma.*LayerNorm.weight|LayerNorm.weight.*LayerNorm.gamma"):
        hf_to_flax({"embeddings.LayerNorm.gamma": np.ones(2), "embeddings.LayerNorm.weight": np.ones(2)})


# --- Round trips through transformers -----------------------------------------------


@pytest.mark.parametrize("head", ["mlm", "classification"])
def test_round_trip_through_transformers(torch, make_hf_model, tiny_batch, tmp_path, head):
    import transformers

    hf = make_hf_model(ARCH[head])
    hf.save_pretrained(tmp_path / "hf")
    config, params = load_hf_checkpoint(tmp_path / "hf", head=head)
    out = save_hf_checkpoint(config, params, tmp_path / "ours")

    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == [ARCH[head]]
    reloaded, info = getattr(transformers, ARCH[head]).from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    reloaded.eval()
    assert np.max(np.abs(_logits(torch, reloaded, tiny_batch) - _logits(torch, hf, tiny_batch))) <= 1e-5
    ours = np.asarray(MODULE[head](config).apply({"params": params}, **tiny_batch))
    mask = tiny_batch["attention_mask"].astype(bool) if head == "mlm" else slice(None)
    assert np.max(np.abs(ours[mask] - _logits(torch, reloaded, tiny_batch)[mask])) <= 1e-4


def test_base_model_round_trip_with_tokenizer(torch, packaged_model_dir, tmp_path):
    import transformers

    config, params = load_hf_checkpoint(packaged_model_dir, head="none")
    assert set(params) == {"embeddings", "encoder", "pooler"}
    out = save_hf_checkpoint(config, params, tmp_path / "minilm", tokenizer_dir=packaged_model_dir)
    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"} <= {
        p.name for p in out.iterdir()
    }
    _, info = transformers.BertModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    again_config, again = load_hf_checkpoint(out, head="none")
    assert again_config == config
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_pytorch_bin_layout(torch, make_hf_model, tiny_batch, tmp_path):
    hf = make_hf_model("BertForMaskedLM")
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # with the tied decoder tensors
    config, params = load_hf_checkpoint(tmp_path, head="mlm")
    ours = np.asarray(BertForMaskedLM(config).apply({"params": params}, **tiny_batch))
    mask = tiny_batch["attention_mask"].astype(bool)
    assert np.max(np.abs(ours[mask] - _logits(torch, hf, tiny_batch)[mask])) <= 1e-4


def test_prefixless_layout_with_position_ids(torch, make_hf_model, tmp_path):
    """A BertModel checkpoint (no `bert.` prefix, a position_ids buffer) loads with any head."""
    base = make_hf_model("BertModel")
    base.save_pretrained(tmp_path)
    _rewrite(tmp_path, lambda t: t | {"embeddings.position_ids": np.arange(40, dtype=np.int64)[None]})
    assert not any(k.startswith("bert.") for k in load_file(str(tmp_path / "model.safetensors")))
    _, params = load_hf_checkpoint(tmp_path, head="none")
    expected = base.embeddings.word_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(params["embeddings"]["word_embeddings"]["embedding"], expected)
    _, params = load_hf_checkpoint(tmp_path, head="classification")
    np.testing.assert_array_equal(params["bert"]["embeddings"]["word_embeddings"]["embedding"], expected)


def test_pretraining_layout_skips_nsp_and_pooler(make_hf_model, tiny_batch, tmp_path, caplog, torch):
    hf = make_hf_model("BertForPreTraining")
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="theseus_jax"):
        config, params = load_hf_checkpoint(tmp_path, head="mlm")
    assert "cls.seq_relationship.weight" in caplog.text and "bert.pooler.dense.weight" in caplog.text
    assert "pooler" not in params["bert"]
    ours = np.asarray(BertForMaskedLM(config).apply({"params": params}, **tiny_batch))
    with torch.no_grad():
        theirs = hf(**{k: torch.from_numpy(v) for k, v in tiny_batch.items()}).prediction_logits.numpy()
    mask = tiny_batch["attention_mask"].astype(bool)
    assert np.max(np.abs(ours[mask] - theirs[mask])) <= 1e-4


def test_missing_heads_are_initialised_and_logged(make_hf_model, tmp_path, caplog):
    make_hf_model("BertModel").save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="theseus_jax"):
        config, mlm = load_hf_checkpoint(tmp_path, head="mlm", seed=1)
    assert "cls.predictions.transform.dense.weight" in caplog.text and "cls.predictions.bias" in caplog.text
    np.testing.assert_array_equal(mlm["cls"]["predictions"]["bias"], np.zeros(config.vocab_size))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="theseus_jax"):
        config, clf = load_hf_checkpoint(tmp_path, head="classification", num_labels=5, seed=1)
    assert "classifier.weight" in caplog.text and "classifier.bias" in caplog.text
    kernel = np.asarray(clf["classifier"]["kernel"])
    assert kernel.shape == (32, 5) and 0.005 < kernel.std() < 0.04  # normal(initializer_range=0.02)
    _, again = load_hf_checkpoint(tmp_path, head="classification", num_labels=5, seed=1)
    np.testing.assert_array_equal(again["classifier"]["kernel"], kernel)


def test_save_is_atomic_and_replaces(make_hf_model, tmp_path):
    make_hf_model("BertForMaskedLM").save_pretrained(tmp_path / "hf")
    config, params = load_hf_checkpoint(tmp_path / "hf", head="mlm")
    save_hf_checkpoint(config, params, tmp_path / "out")
    save_hf_checkpoint(config, params, tmp_path / "out")  # overwrites in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]  # no staging folders left
    with pytest.raises(ValueError, match="do not match the config"):
        save_hf_checkpoint(config.replace(num_hidden_layers=1), params, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_cli_check(packaged_model_dir, capsys, torch):
    assert convert.main(["--check", str(packaged_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "22,713,216 parameters" in out and "max abs diff of the pooler output" in out


# --- Bad inputs ---------------------------------------------------------------------


@pytest.fixture
def saved(make_hf_model, tmp_path):
    folder = tmp_path / "ckpt"
    make_hf_model("BertForMaskedLM").save_pretrained(folder)
    return folder


def test_error_no_config(saved):
    (saved / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt/config\.json"):
        load_hf_checkpoint(saved)


def test_error_no_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt: no weights file \(model\.safetensors or pytorch_model\.bin, or their sharded \.index\.json\)"):
        load_hf_checkpoint(saved)


def test_error_config_not_json(saved):
    (saved / "config.json").write_text('{"model_type": "bert",')
    with pytest.raises(CheckpointError, match=r"ckpt/config\.json: not a JSON config"):
        load_hf_checkpoint(saved)


def test_error_not_bert(saved):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type=.gpt2. is not supported"):
        load_hf_checkpoint(saved)


def test_error_wrong_shape(saved):
    name = "bert.encoder.layer.1.intermediate.dense.weight"
    _rewrite(saved, lambda t: t | {name: np.zeros((36, 32), np.float32)})
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor '{name}' has shape \(36, 32\), .* \(37, 32\)"):
        load_hf_checkpoint(saved)


def test_error_unknown_tensor(saved):
    _rewrite(saved, lambda t: t | {"bert.encoder.layer.2.output.dense.weight": np.zeros((32, 37), np.float32)})
    with pytest.raises(ValueError, match=r"model\.safetensors: unknown tensors .*bert\.encoder\.layer\.2\.output"):
        load_hf_checkpoint(saved)


def test_error_missing_encoder_tensor(saved):
    name = "bert.encoder.layer.0.attention.self.query.weight"
    _rewrite(saved, lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(ValueError, match=rf"model\.safetensors: missing tensors: \['{name}'\]"):
        load_hf_checkpoint(saved)


def test_error_untied_decoder(saved):
    def untie(t):
        return t | {"cls.predictions.decoder.weight": t["bert.embeddings.word_embeddings.weight"] + 1}

    _rewrite(saved, untie)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'cls\.predictions\.decoder\.weight' differs"):
        load_hf_checkpoint(saved)


def test_tied_decoder_tensors_are_accepted(saved):
    tensors = load_file(str(saved / "model.safetensors"))
    bias = tensors["cls.predictions.bias"]

    def add_decoder(t):
        rest = {k: v for k, v in t.items() if k != "cls.predictions.bias"}
        return rest | {
            "cls.predictions.decoder.weight": t["bert.embeddings.word_embeddings.weight"],
            "cls.predictions.decoder.bias": bias,
        }

    _rewrite(saved, add_decoder)
    _, params = load_hf_checkpoint(saved)
    np.testing.assert_array_equal(params["cls"]["predictions"]["bias"], bias)


def test_error_bad_head_and_params():
    with pytest.raises(ValueError, match="head='seq2seq'"):
        load_hf_checkpoint("/nonexistent", head="seq2seq")
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_hf_checkpoint("/nonexistent")
    config = BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    params = BertModel(config).init(jax.random.key(0), np.zeros((1, 1), np.int32))["params"]
    with pytest.raises(ValueError, match="not a BERT model or head"):
        save_hf_checkpoint(config, {"decoder": params}, "/tmp/unused")
