"""The Flax BERT against transformers' PyTorch BERT (float32, eval mode): same numbers."""

import numpy as np
import pytest

from theseus_jax.convert import load_hf_checkpoint
from theseus_jax.models.bert import BertForMaskedLM, BertForSequenceClassification, BertModel

TOLERANCE = 1e-4


def _torch_inputs(torch, batch):
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def test_masked_lm_logits_match(torch, make_hf_model, tiny_batch, tmp_path):
    hf = make_hf_model("BertForMaskedLM")
    hf.save_pretrained(tmp_path)
    config, params = load_hf_checkpoint(tmp_path, head="mlm")
    ours = np.asarray(BertForMaskedLM(config).apply({"params": params}, **tiny_batch, deterministic=True))
    with torch.no_grad():
        theirs = hf(**_torch_inputs(torch, tiny_batch)).logits.numpy()
    attended = tiny_batch["attention_mask"].astype(bool)
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours[attended] - theirs[attended])) <= TOLERANCE


def test_classification_logits_match(torch, make_hf_model, tiny_batch, tmp_path):
    hf = make_hf_model("BertForSequenceClassification")
    hf.save_pretrained(tmp_path)
    config, params = load_hf_checkpoint(tmp_path, head="classification")
    assert config.num_labels == 3
    ours = np.asarray(BertForSequenceClassification(config).apply({"params": params}, **tiny_batch, deterministic=True))
    with torch.no_grad():
        theirs = hf(**_torch_inputs(torch, tiny_batch)).logits.numpy()
    assert ours.shape == theirs.shape == (3, 3)
    assert np.max(np.abs(ours - theirs)) <= TOLERANCE


def test_packaged_minilm_hidden_states_and_pooler_match(torch, packaged_model_dir):
    import transformers

    from theseus_jax.tokenization import load_tokenizer

    tokenizer = load_tokenizer(packaged_model_dir)
    sentences = [
        "The ship of Theseus had all of its planks replaced, one at a time.",
        "Is it the same ship?",
        "A student learns from a teacher, module by module.",
    ]
    batch = dict(tokenizer(sentences, padding=True, return_tensors="np"))
    assert batch["attention_mask"].min() == 0  # the batch really is padded
    config, params = load_hf_checkpoint(packaged_model_dir, head="none")
    ours = BertModel(config).apply({"params": params}, **batch, deterministic=True, output_hidden_states=True)
    hf = transformers.BertModel.from_pretrained(str(packaged_model_dir)).eval()
    with torch.no_grad():
        theirs = hf(**_torch_inputs(torch, batch), output_hidden_states=True)

    assert len(ours.hidden_states) == len(theirs.hidden_states) == config.num_hidden_layers + 1
    for layer, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert np.max(np.abs(np.asarray(a) - b.numpy())) <= TOLERANCE, f"hidden state {layer}"
    assert np.max(np.abs(np.asarray(ours.pooler_output) - theirs.pooler_output.numpy())) <= TOLERANCE


@pytest.mark.parametrize("head", ["mlm", "classification"])
def test_jitted_forward_matches_eager(make_hf_model, tiny_batch, tmp_path, head):
    """The converted params work under jit too (what training and evaluation use)."""
    import jax

    make_hf_model("BertForPreTraining").save_pretrained(tmp_path)
    config, params = load_hf_checkpoint(tmp_path, head=head)
    module = (BertForMaskedLM if head == "mlm" else BertForSequenceClassification)(config)
    eager = module.apply({"params": params}, **tiny_batch)
    jitted = jax.jit(module.apply)({"params": params}, **tiny_batch)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)


def test_classification_gradients_match(torch, make_hf_model, tiny_batch, tmp_path):
    """Every parameter's gradient of the cross-entropy equals transformers' autograd (the
    backward pass is ours: Dense weight gradients are written out by hand for YNNPACK)."""
    import jax
    import optax
    from flax import traverse_util

    from theseus_jax.convert import flax_to_hf

    hf = make_hf_model("BertForSequenceClassification")
    hf.save_pretrained(tmp_path)
    config, params = load_hf_checkpoint(tmp_path, head="classification")
    labels = np.array([0, 2, 1])

    def loss(p):
        logits = BertForSequenceClassification(config).apply({"params": p}, **tiny_batch, deterministic=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    ours = flax_to_hf(traverse_util.flatten_dict(jax.grad(loss)(params)))
    out = hf(**_torch_inputs(torch, tiny_batch), labels=torch.from_numpy(labels))
    out.loss.backward()
    theirs = {name: p.grad.numpy() for name, p in hf.named_parameters()}
    assert set(ours) == set(theirs)
    for name, grad in theirs.items():
        scale = max(np.max(np.abs(grad)), 1e-3)
        assert np.max(np.abs(ours[name] - grad)) <= TOLERANCE * scale, name
