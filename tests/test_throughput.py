"""Measured inference speed on exported folders: a 4-layer teacher and its 2-layer successor,
saved as the trainer exports them, timed in one process from raw text."""

import math

import jax
import jax.numpy as jnp
import pytest

from theseus_jax import throughput
from theseus_jax.compression import theseus
from theseus_jax.convert import save_hf_checkpoint
from theseus_jax.models.bert import BertConfig, BertForSequenceClassification

TEXTS = [f"text number {i} " + "with a few more words " * (i % 5) for i in range(20)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, packaged_model_dir):
    """name -> folder: a random 4-layer classifier and its successor of layers 0 and 2."""
    config = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=48,
                        max_position_embeddings=64, num_labels=2)
    params = BertForSequenceClassification(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    root = tmp_path_factory.mktemp("exported")
    successor = theseus.extract_successor(config, theseus.init_theseus_params(params, config, 2))
    save_hf_checkpoint(config, params, root / "teacher", tokenizer_dir=packaged_model_dir)
    save_hf_checkpoint(*successor, root / "student", tokenizer_dir=packaged_model_dir)
    return {"teacher": root / "teacher", "student": root / "student"}


def test_throughput_of_exported_folders_is_positive_and_consistent(exported):
    measured = throughput.measure(exported, TEXTS, batch_size=8, rounds=3, reference="teacher", max_length=64)
    teacher, student = measured["teacher"], measured["student"]
    assert (teacher.layers, student.layers) == (4, 2)
    for t in (teacher, student):
        assert (t.texts, t.batch_size, t.batches, t.rounds) == (20, 8, 3, 3)  # 8 + 8 + 4 texts
        assert t.seconds > 0 and t.peak_rss_bytes > 0 and t.threads >= 1
        assert t.texts_per_second * t.seconds == pytest.approx(20)
        assert t.ms_per_batch * t.batches == pytest.approx(1e3 * t.seconds)
    assert teacher.speedup == 1.0
    assert student.speedup == pytest.approx(teacher.seconds / student.seconds)
    assert throughput.Throughput.from_json(student.to_json()) == student
    assert throughput.measure(exported, TEXTS[:3], rounds=1)["student"].speedup is None


def test_command_line_prints_one_line_per_model(exported, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:5]) + "\n")
    throughput.main(["--model", f"teacher={exported['teacher']}", "--model", str(exported["student"]),
                     "--file", str(texts), "--batch-size", "2", "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["teacher", "4 layers"], ["student", "2 layers"]]
    assert lines[0].split("\t")[4] == "speed-up 1.00"
    assert all(math.isfinite(float(line.split("\t")[2].split()[0])) for line in lines)
