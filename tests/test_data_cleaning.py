"""Cleaning, stratified splits and statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from theseus_jax.data.cleaning import CleaningReport, clean
from theseus_jax.data.records import DataError, Example
from theseus_jax.data.splits import stratified_split
from theseus_jax.data.statistics import dataset_statistics


def ex(text, label, line):
    return Example(text, label, f"f:{line}")


def test_clean_drops_empty_duplicates_and_conflicting_texts():
    examples = [
        ex("gut", 0, 1),
        ex("  \t", 1, 2),  # whitespace only
        ex("gut", 0, 3),  # exact duplicate of line 1
        ex("streit", 1, 4),
        ex("", 0, 5),  # empty
        ex("streit", 0, 6),  # conflicting label: both copies go
        ex("böse", 1, 7),
        ex("streit", 1, 8),
        ex("Gut", 0, 9),  # case differs: another text
    ]
    kept, report = clean(examples)
    assert kept == [ex("gut", 0, 1), ex("böse", 1, 7), ex("Gut", 0, 9)]
    assert report == CleaningReport(kept=3, empty=2, duplicates=2, conflicting=2)


def test_stratified_split_keeps_class_shares():
    examples = [ex(f"p{i}", 1, i) for i in range(100)] + [ex(f"n{i}", 0, i) for i in range(300)]
    train, test, validation = stratified_split(examples, test_share=0.2, seed=0)
    assert validation == []
    assert (sum(e.label for e in test), len(test)) == (20, 80)
    assert (sum(e.label for e in train), len(train)) == (80, 320)
    assert sorted(e.source + e.text for e in train + test) == sorted(e.source + e.text for e in examples)
    train, test, validation = stratified_split(examples, test_share=0.2, seed=0, validation_share=0.1)
    assert [(sum(e.label for e in part), len(part)) for part in (train, test, validation)] == [(70, 280), (20, 80), (10, 40)]
    assert len({e.text for e in train} | {e.text for e in test} | {e.text for e in validation}) == 400


def test_split_is_seeded():
    examples = [ex(f"t{i}", i % 2, i) for i in range(50)]
    assert stratified_split(examples, seed=1) == stratified_split(examples, seed=1)
    assert stratified_split(examples, seed=1)[1] != stratified_split(examples, seed=2)[1]


@pytest.mark.parametrize("test_share, validation_share", [(0.0, 0.0), (1.0, 0.0), (0.5, 0.5)])
def test_split_rejects_bad_shares(test_share, validation_share):
    with pytest.raises(DataError, match="bad split shares"):
        stratified_split([ex("a", 1, 1)], test_share, 0, validation_share)


def test_statistics_by_hand():
    examples = [ex("ab", 1, 1), ex("abcd", 0, 2), ex("abcdef", 0, 3)]
    stats = dataset_statistics(examples, token_lengths=[3, 10, 600], max_length=512)
    assert stats["count"] == 3 and stats["positives"] == 1 and stats["negatives"] == 2
    assert stats["characters"] == pytest.approx(
        {"mean": 4.0, "std": math.sqrt(8 / 3), "median": 4.0, "min": 2.0, "max": 6.0}
    )
    mean = 613 / 3
    std = math.sqrt(((3 - mean) ** 2 + (10 - mean) ** 2 + (600 - mean) ** 2) / 3)
    assert stats["tokens"] == pytest.approx({"mean": mean, "std": std, "median": 10.0, "min": 3.0, "max": 600.0})
    assert stats["truncated_share"] == pytest.approx(1 / 3)
    unlabelled = dataset_statistics([ex("abc", None, 1)], [5], 512)
    assert "positives" not in unlabelled and unlabelled["truncated_share"] == 0.0


def _germeval_file(tmp_path, texts):
    path = tmp_path / "train.tsv"
    path.write_text("".join(f"{t}\t{'OFFENSE' if i % 3 == 0 else 'OTHER'}\tOTHER\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def test_rows_dropped_by_cleaning_are_reported_once_per_file(tmp_path, caplog):
    """29 of 200 rows with an empty text (every 7th, a hand count): one warning naming the file,
    the counts and the reasons; reading the file again says nothing new."""
    from configs.base import data_config
    from theseus_jax.experiments import datasets

    path = _germeval_file(tmp_path, ["   " if i % 7 == 0 else f"text number {i}" for i in range(200)])
    data = data_config(format="germeval", train_path=str(path))
    with caplog.at_level("INFO", logger="theseus_jax"):
        datasets.split_examples(data, labelled=True)
        datasets.split_examples(data, labelled=True)
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].levelname == "WARNING"
    assert dropped[0].getMessage().startswith(
        f"data: {path}: dropped 29 of 200 rows (29 empty texts, 0 duplicates, 0 with conflicting labels); 171 kept"
    )


def test_a_few_dropped_rows_are_an_info_line(tmp_path, caplog):
    from configs.base import data_config
    from theseus_jax.experiments import datasets

    path = _germeval_file(tmp_path, [f"text number {i}" for i in range(60)] + ["text number 0"])  # row 60 repeats row 0, label too
    with caplog.at_level("INFO", logger="theseus_jax"):
        datasets.split_examples(data_config(format="germeval", train_path=str(path)), labelled=True)
    (line,) = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert line.levelname == "INFO"
    assert line.getMessage() == f"data: {path}: dropped 1 of 61 rows (0 empty texts, 1 duplicates, 0 with conflicting labels); 60 kept"
