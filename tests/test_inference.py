"""The prediction chain from raw text against transformers' PyTorch classifier."""

import shutil

import numpy as np
import pytest

from theseus_jax.inference import Predictor
from theseus_jax.tokenization import packaged_model_dir

TEXTS = [
    "short",
    "a somewhat longer sentence about ships and planks " * 3,
    "a very long text that needs the largest bucket " * 12,
]


@pytest.fixture
def hf_classifier(tmp_path, torch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=2
    )
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "model")
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(packaged_model_dir() / name, tmp_path / "model" / name)
    return model, tmp_path / "model"


def test_probabilities_match_transformers_across_buckets(hf_classifier, torch):
    model, folder = hf_classifier
    predictor = Predictor(folder, max_length=128, buckets=(16, 32, 64))
    lengths = [predictor.encode([t])[0].shape[1] for t in TEXTS]
    assert lengths == [16, 32, 128]  # 3 tokens -> 16, ~30 -> 32, >64 -> max_length
    ours = predictor.predict_proba(TEXTS, batch_size=2)
    encoded = predictor.tokenizer(TEXTS, truncation=True, max_length=128, padding=True, return_tensors="pt")
    with torch.inference_mode():
        theirs = torch.softmax(model(**encoded).logits, -1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert ours.shape == (3, 2)


def test_bad_input(hf_classifier, tmp_path):
    _, folder = hf_classifier
    predictor = Predictor(folder, max_length=64)
    with pytest.raises(ValueError, match="non-empty list"):
        predictor.predict_proba([])
    with pytest.raises(ValueError, match="non-empty list"):
        predictor.predict_proba("a single string")
    with pytest.raises(FileNotFoundError):
        Predictor(tmp_path / "missing")
