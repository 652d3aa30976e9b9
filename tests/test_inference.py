"""The prediction chain from raw text against transformers' PyTorch classifier."""

import shutil

import numpy as np
import pytest

from theseus_jax.inference import Predictor, main
from theseus_jax.tokenization import packaged_model_dir

TEXTS = [
    "short",
    "a somewhat longer sentence about ships and planks " * 3,
    "a very long text that needs the largest bucket " * 12,
]


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory, torch):
    """A tiny transformers classifier saved with the packaged tokenizer; weights perturbed
    away from HF's init (zero biases, unit LayerNorms) so that a dropped tensor shows."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=3
    )
    model = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("inference") / "model"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (packaged_model_dir() / name).exists():
            shutil.copy(packaged_model_dir() / name, folder / name)
    return model, folder


def test_probabilities_match_transformers_across_buckets(hf_classifier, torch):
    model, folder = hf_classifier
    predictor = Predictor(folder, max_length=128, buckets=(16, 32, 64))
    lengths = [predictor.encode([t])[0].shape[1] for t in TEXTS]
    assert lengths == [16, 32, 128]  # 3 tokens -> 16, ~30 -> 32, >64 -> max_length
    ours = predictor.predict_proba(TEXTS, batch_size=2)  # batches padded to 32 and 128
    encoded = predictor.tokenizer(TEXTS, truncation=True, max_length=128, padding=True, return_tensors="pt")
    with torch.inference_mode():
        theirs = torch.softmax(model(**encoded).logits, -1).numpy()
    assert ours.shape == (3, 3)
    assert np.ptp(theirs, axis=1).min() > 1e-2  # not all-uniform outputs
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(predictor.predict_proba(TEXTS[::-1], batch_size=1), theirs[::-1], atol=1e-5)


def test_bucket_selection_and_one_compilation_per_shape(hf_classifier):
    _, folder = hf_classifier
    predictor = Predictor(folder)
    assert predictor.buckets == (32, 64, 128, 256, 512)
    assert Predictor(folder, max_length=4096).max_length == 512  # capped at the position embeddings
    ids, mask = predictor.encode([TEXTS[0], TEXTS[2]])
    assert ids.shape == mask.shape == (2, 128)  # the longest text (~110 tokens) picks the bucket
    assert mask[0].sum() == 3 and 64 < mask[1].sum() < 128
    assert predictor.encode([TEXTS[2] * 10])[0].shape == (1, 512)  # truncated to max_length
    predictor.predict_proba(TEXTS[:2], batch_size=2)
    predictor.predict_proba(TEXTS[1:2] * 2, batch_size=2)  # same (2, 32) shape: no new compilation
    assert predictor._probabilities._cache_size() == 1


def test_bfloat16_option_is_close(hf_classifier):
    _, folder = hf_classifier
    exact = Predictor(folder, max_length=64).predict_proba(TEXTS)
    half = Predictor(folder, max_length=64, dtype="bfloat16").predict_proba(TEXTS)
    np.testing.assert_allclose(half, exact, atol=3e-2)


def test_cli_prints_probabilities(hf_classifier, tmp_path, capsys):
    _, folder = hf_classifier
    texts = tmp_path / "texts.txt"
    texts.write_text("from a file\n\nanother line\n", encoding="utf-8")
    main(["--model", str(folder), "--text", "some text", "--file", str(texts)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[-1] for line in lines] == ["some text", "from a file", "another line"]
    for line in lines:
        assert sum(float(p) for p in line.split("\t")[:-1]) == pytest.approx(1.0, abs=1e-3)


def test_bad_input(hf_classifier, tmp_path):
    _, folder = hf_classifier
    predictor = Predictor(folder, max_length=64)
    with pytest.raises(ValueError, match="non-empty list"):
        predictor.predict_proba([])
    with pytest.raises(ValueError, match="non-empty list"):
        predictor.predict_proba("a single string")
    with pytest.raises(FileNotFoundError):
        Predictor(tmp_path / "missing")
    with pytest.raises(SystemExit):
        main(["--model", str(folder)])  # neither --text nor --file
