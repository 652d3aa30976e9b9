"""Models named by Hub ID, resolved from a Hugging Face cache built here (no network);
sharded weights; tokenizers of every family from their own files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from theseus_jax.convert import load_hf_checkpoint
from theseus_jax.errors import CheckpointError, MissingCheckpoint
from theseus_jax.models.hub import parse_hub_id, resolve_model

from conftest import RUDE, WORDS

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """`folder`'s files as huggingface_hub stores a download: snapshots/<commit>/ and refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty hub cache with HF_HUB_OFFLINE on (huggingface_hub reads both at call time
    from its constants module, which was imported before this test)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def offline_env(cache: Path) -> dict[str, str]:
    return os.environ | {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def sentencepiece_tokenizer(folder: Path, texts: list[str], vocab_size: int = 60) -> None:
    """An XLM-R style folder holding only sentencepiece.bpe.model (trained here on `texts`)."""
    spm = pytest.importorskip("sentencepiece")
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(texts), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "sentencepiece.bpe"), vocab_size=vocab_size,
        model_type="bpe", minloglevel=2,
    )
    corpus.unlink()
    (folder / "sentencepiece.bpe.vocab").unlink()


@pytest.fixture(scope="module")
def xlmr_classifier(tmp_path_factory, torch):
    """A tiny 4-layer XLM-R classifier whose folder holds only sentencepiece.bpe.model as tokenizer."""
    import transformers

    folder = tmp_path_factory.mktemp("xlmr") / "model"
    texts = [" ".join(WORDS + RUDE)] * 20
    sentencepiece_tokenizer(folder, texts)
    (folder / "config.json").write_text(json.dumps({"model_type": "xlm-roberta"}))
    vocab = len(transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
    torch.manual_seed(0)
    config = transformers.XLMRobertaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=66, type_vocab_size=1, num_labels=2,
    )
    model = transformers.XLMRobertaForSequenceClassification(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    return model, folder


def test_parse_hub_id():
    assert parse_hub_id("deepset/gbert-base") == ("deepset/gbert-base", None)
    assert parse_hub_id("FacebookAI/xlm-roberta-base@v1.0") == ("FacebookAI/xlm-roberta-base", "v1.0")
    for not_an_id in ("runs/demo/best/x", "./org/name", "/org/name", "name", "~/org"):
        assert parse_hub_id(not_an_id) is None


def test_resolves_from_offline_cache(xlmr_classifier, offline_cache):
    _, folder = xlmr_classifier
    snapshot = put_in_cache(offline_cache, "org/tiny-xlmr", folder)
    assert resolve_model("org/tiny-xlmr") == snapshot
    assert resolve_model(f"org/tiny-xlmr@{COMMIT}") == snapshot
    assert resolve_model(folder) == folder  # a local folder is itself
    config, params = load_hf_checkpoint("org/tiny-xlmr", head="classification")
    _, direct = load_hf_checkpoint(folder, head="classification")
    assert config.model_type == "xlm-roberta"
    import jax

    jax.tree.map(np.testing.assert_array_equal, params, direct)


def test_empty_cache_offline_names_id_cache_and_fix(offline_cache):
    with pytest.raises(MissingCheckpoint) as caught:
        resolve_model("org/missing-model")
    message = str(caught.value)
    assert "org/missing-model" in message and "HF_HUB_OFFLINE is set" in message
    assert str(offline_cache / "models--org--missing-model") in message
    assert "hf download org/missing-model" in message and "\n" not in message
    assert isinstance(caught.value, CheckpointError) and isinstance(caught.value, FileNotFoundError)
    with pytest.raises(MissingCheckpoint, match="no such checkpoint folder"):
        resolve_model("not-a-folder-nor-an-id")


def test_predictor_from_hub_id_equals_transformers(xlmr_classifier, offline_cache, torch):
    from theseus_jax.inference import Predictor

    model, folder = xlmr_classifier
    put_in_cache(offline_cache, "org/tiny-xlmr", folder)
    predictor = Predictor("org/tiny-xlmr", max_length=64)
    assert predictor.max_length == 64  # 66 positions, counted from padding_idx + 1 = 2
    texts = ["der Politik heute", "Idiot", " ".join(WORDS)]
    ours = predictor.predict_proba(texts)
    ids, mask = predictor.encode(texts)
    assert mask.min() == 0 and ids[mask == 0].tolist() == [1] * int((mask == 0).sum())  # padded with <pad> = 1
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()).logits
    np.testing.assert_allclose(ours, torch.softmax(logits, -1).numpy(), atol=1e-5)


def test_convert_cli_checks_a_hub_model(xlmr_classifier, offline_cache, capsys, torch):
    from theseus_jax import convert

    _, folder = xlmr_classifier
    put_in_cache(offline_cache, "org/tiny-xlmr", folder)
    assert convert.main(["--check", "org/tiny-xlmr"]) == 0
    out = capsys.readouterr().out
    assert "org/tiny-xlmr: xlm-roberta 4 layers" in out and "XLMRobertaModel" in out
    assert "max abs diff per hidden state" in out


def test_inference_cli_offline(xlmr_classifier, tmp_path):
    _, folder = xlmr_classifier
    cache = tmp_path / "hub"
    put_in_cache(cache, "org/tiny-xlmr", folder)
    command = [sys.executable, "-m", "theseus_jax.inference", "--model", "org/tiny-xlmr", "--text", "der Politik"]
    done = subprocess.run(command, cwd=REPO, env=offline_env(cache), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    probabilities = [float(x) for x in done.stdout.split("\t")[:2]]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)

    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(command, cwd=REPO, env=offline_env(empty), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "org/tiny-xlmr" in lines[0] and str(empty / "models--org--tiny-xlmr") in lines[0]


def _launch(workdir, data, cache, model_path):
    config = workdir.parent / "hub_config.py"
    config.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "import ml_collections\n"
        "from tiny_config import get_config as tiny\n\n\n"
        "def get_config():\n"
        "    config = tiny()\n"
        "    config.model.random_config = ml_collections.ConfigDict()\n"
        "    return config\n"
    )
    command = [
        sys.executable, str(REPO / "launch.py"), f"--config={config}", f"--workdir={workdir}",
        "--config.pipeline=cls_compress", f"--config.model.path={model_path}", f"--config.cls.data.train_path={data}",
        "--config.cls.epochs=1", "--config.cls.max_length=64", "--config.cls.buckets=(16,64)",
    ]
    return subprocess.run(command, cwd=REPO, env=offline_env(cache), capture_output=True, text=True, timeout=600)


def test_launch_compresses_a_hub_model_from_offline_cache(xlmr_classifier, germeval_tsv, tmp_path, torch):
    import transformers

    _, folder = xlmr_classifier
    cache = tmp_path / "hub"
    put_in_cache(cache, "org/tiny-xlmr", folder)
    done = _launch(tmp_path / "run", germeval_tsv, cache, "org/tiny-xlmr")
    assert done.returncode == 0, done.stderr[-3000:]
    best = tmp_path / "run" / "best"
    written = json.loads((best / "config.json").read_text())
    assert written["model_type"] == "xlm-roberta" and written["num_hidden_layers"] == 2
    assert (best / "sentencepiece.bpe.model").is_file()  # the predecessor's tokenizer travels along
    _, info = transformers.AutoModelForSequenceClassification.from_pretrained(str(best), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_launch_with_empty_offline_cache_stops_with_the_error(germeval_tsv, tmp_path):
    empty = tmp_path / "hub"
    empty.mkdir()
    done = _launch(tmp_path / "run", germeval_tsv, empty, "org/tiny-xlmr")
    assert done.returncode != 0
    assert "org/tiny-xlmr" in done.stderr and str(empty / "models--org--tiny-xlmr") in done.stderr
    assert "hf download org/tiny-xlmr" in done.stderr
    assert not (tmp_path / "run" / "best").exists()


# --- Sharded weights ----------------------------------------------------------------


@pytest.mark.parametrize("safe", [True, False])
def test_sharded_checkpoint_loads_like_the_single_file(torch, tmp_path, safe):
    import transformers

    from test_families import hf_config

    torch.manual_seed(0)
    model = transformers.AutoModelForMaskedLM.from_config(hf_config("roberta")).eval()
    model.save_pretrained(tmp_path / "single")
    if safe:
        model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
        index = "model.safetensors.index.json"
    else:  # the legacy layout: pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json
        (tmp_path / "sharded").mkdir()
        model.config.save_pretrained(tmp_path / "sharded")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        names = sorted(state)
        shards = [names[: len(names) // 2], names[len(names) // 2 :]]
        weight_map = {}
        for i, part in enumerate(shards, 1):
            file = f"pytorch_model-{i:05d}-of-00002.bin"
            torch.save({k: state[k] for k in part}, tmp_path / "sharded" / file)
            weight_map |= {k: file for k in part}
        index = "pytorch_model.bin.index.json"
        (tmp_path / "sharded" / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert len(set(json.loads((tmp_path / "sharded" / index).read_text())["weight_map"].values())) > 1
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    import jax

    single_config, single = load_hf_checkpoint(tmp_path / "single", head="mlm")
    sharded_config, sharded = load_hf_checkpoint(tmp_path / "sharded", head="mlm")
    assert sharded_config == single_config
    assert jax.tree.structure(sharded) == jax.tree.structure(single)
    jax.tree.map(np.testing.assert_array_equal, sharded, single)


def test_missing_shard_is_named(torch, tmp_path):
    import transformers

    from test_families import hf_config

    transformers.AutoModel.from_config(hf_config("bert")).save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(MissingCheckpoint, match=f"lists shard '{shard.name}'"):
        load_hf_checkpoint(tmp_path, head="none")


# --- Tokenizers of every family -----------------------------------------------------


def test_tokenizers_from_family_files(tmp_path):
    """Folders with only sentencepiece.bpe.model (XLM-R) or vocab.json + merges.txt (RoBERTa)
    load as fast tokenizers, and their tokenizer.json (any model type) loads again."""
    from tokenizers import ByteLevelBPETokenizer

    from theseus_jax.tokenization import load_tokenizer

    texts = [" ".join(WORDS + RUDE)] * 20
    sentencepiece_tokenizer(tmp_path / "xlmr", texts)
    (tmp_path / "xlmr" / "config.json").write_text(json.dumps({"model_type": "xlm-roberta"}))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    (tmp_path / "roberta").mkdir()
    bpe.save_model(str(tmp_path / "roberta"))
    (tmp_path / "roberta" / "config.json").write_text(json.dumps({"model_type": "roberta"}))

    for name in ("xlmr", "roberta"):
        tokenizer = load_tokenizer(tmp_path / name, max_length=16)
        assert tokenizer.is_fast and tokenizer.pad_token_id == 1 and tokenizer.model_max_length == 16
        ids = tokenizer("der Politik")["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) > 3
        tokenizer.save_pretrained(tmp_path / f"{name}-json")  # tokenizer.json of this model type
        assert load_tokenizer(tmp_path / f"{name}-json")("der Politik")["input_ids"] == ids
    with pytest.raises(MissingCheckpoint, match="no tokenizer files"):
        load_tokenizer(tmp_path)
