"""The inference benchmark on a user's pair: its own store and section, the built-in
results untouched, a bad path ending in one line, and the successor it builds from a
layer count against transformers' model cut to the same layers."""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package

from benchmarks import bench_inference  # noqa: E402
from theseus_jax.errors import run_cli  # noqa: E402

from conftest import RUDE, WORDS  # noqa: E402

BUILT_IN_STORE = bench_inference.RESULTS / "bench.json"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w.lower() for w in WORDS + RUDE})


@pytest.fixture(scope="module")
def tiny_hf_config():
    """Overrides conftest's: 4 layers (a 2-layer successor takes layers 0 and 2), the test vocabulary."""
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, num_labels=3,
    )


@pytest.fixture
def checkpoint(make_hf_model, tmp_path):
    """`checkpoint(name, vocab, seed)`: a tiny classifier folder with a WordPiece vocab.txt."""

    def write(name: str, vocab: list[str] = VOCAB, seed: int = 0) -> tuple[object, Path]:
        model = make_hf_model("BertForSequenceClassification", seed=seed)
        folder = tmp_path / name
        model.save_pretrained(folder)
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        return model, folder

    return write


def test_custom_pair_has_its_own_store_and_section(checkpoint, tmp_path):
    _, folder = checkpoint("tiny-a")
    benchmarks_md = tmp_path / "B.md"
    benchmarks_md.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    built_in = BUILT_IN_STORE.read_bytes()
    bench_inference.main([
        "--predecessor", str(folder), "--successor", "2", "--text-sets", "tweets", "--batch-sizes", "1,2",
        "--budget", "0.5", "--reps", "3", "--rounds", "1", "--min-reps", "1", "--store", str(tmp_path / "x.json"), "--output", str(benchmarks_md),
    ])
    assert BUILT_IN_STORE.read_bytes() == built_in
    (backend, result), = json.loads((tmp_path / "x.json").read_text()).items()
    rows = result["speedup"]
    assert [(r["models"], r["texts"], r["n"]) for r in rows] == [("tiny-a 4->2", "tweets", 1), ("tiny-a 4->2", "tweets", 2)]
    assert all(r["speedup_chain"] > 0 and r["speedup_forward"] > 0 and r["seq_len"] in (32, 64) for r in rows)
    assert result["frameworks"] == [] and result["meta"]["pair"]["successor"] == "= predecessor layers 0, 2 (untrained)"
    assert (tmp_path / "x.png").stat().st_size > 0
    text = benchmarks_md.read_text()
    title = f"## Inference on {backend.upper()}: tiny-a 4->2\n"
    assert "## Other\n\nkept" in text and text.count(title) == 1
    section = text[text.index(title):]
    assert f"--predecessor {folder} --successor 2" in section and f"![inference]({tmp_path / 'x.png'})" in section
    assert "| tiny-a 4->2 | tweets | 2 |" in section


def test_bad_path_is_one_line_and_status_2(capsys):
    status = run_cli(lambda: bench_inference.main(["--predecessor", "/nonexistent", "--successor", "2"]), bench_inference.PROG)
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "/nonexistent" in err and "Traceback" not in err


def test_successor_from_a_layer_count_is_the_layers_it_names(checkpoint, torch):
    from theseus_jax.models.bert import BertForSequenceClassification

    model, folder = checkpoint("tiny-a")
    successor = bench_inference.custom_pair(str(folder), "2", "float32").predictors["successor"]
    assert successor.config.num_hidden_layers == 2
    ids, mask = successor.encode(["der hund ist dumm", "heute schönes wetter in der stadt, die bahn ist pünktlich"])
    ours = BertForSequenceClassification(successor.config).apply({"params": successor.params}, ids, mask, np.zeros_like(ids))
    reference = copy.deepcopy(model)  # independent: transformers' model with its layers 0 and 2 only
    reference.bert.encoder.layer = torch.nn.ModuleList([reference.bert.encoder.layer[0], reference.bert.encoder.layer[2]])
    with torch.inference_mode():
        theirs = reference(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()).logits.numpy()
    assert np.ptp(theirs) > 1e-2
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


def test_each_side_uses_its_own_tokenizer(checkpoint):
    _, first = checkpoint("tiny-a")
    _, second = checkpoint("tiny-b", vocab=VOCAB[:5] + VOCAB[:4:-1], seed=1)
    pair = bench_inference.custom_pair(str(first), str(second), "float32")
    assert pair.name == "tiny-a 4 -> tiny-b 4"
    vocabularies = {role: p.tokenizer.get_vocab() for role, p in pair.predictors.items()}
    assert vocabularies["predecessor"]["bahn"] == VOCAB.index("bahn") != vocabularies["successor"]["bahn"]
