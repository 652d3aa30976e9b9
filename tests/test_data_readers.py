"""Readers on hand-written files in the real formats: the exact rows kept and every bad-input error."""

from __future__ import annotations

from pathlib import Path

import pytest

from theseus_jax.data.generic import parse_label_map, read_table, read_text_lines
from theseus_jax.data.germeval import read_germeval
from theseus_jax.data.nohate import read_nohate, read_nohate_lm
from theseus_jax.data.records import DataError, Example


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


# --- GermEval -------------------------------------------------------------------------

GERMEVAL = (
    "@user Das ist eine Frechheit!\tOFFENSE\tINSULT\n"
    "Schönes Wetter heute in München.\tOTHER\tOTHER\n"
    "\n"
    "Was für ein Mist |LBR| echt jetzt\tOFFENSE\tPROFANITY\r\n"
)


def test_germeval_reads_coarse_labels_with_offense_positive(tmp_path):
    path = write(tmp_path / "g.txt", GERMEVAL)
    assert read_germeval(path) == [
        Example("@user Das ist eine Frechheit!", 1, f"{path}:1"),
        Example("Schönes Wetter heute in München.", 0, f"{path}:2"),
        Example("Was für ein Mist |LBR| echt jetzt", 1, f"{path}:4"),
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("ok\tOTHER\tOTHER\nno tabs here\n", r"g\.txt:2: expected text<TAB>coarse label<TAB>fine label, found 1"),
        ("ok\tOTHER\tOTHER\nx\tOTHER\n", r"g\.txt:2: .*found 2 field"),
        ("ok\tOTHER\tOTHER\n\nbad\tOFFENCE\tINSULT\n", r"g\.txt:3: unknown label 'OFFENCE'"),
        ("", r"g\.txt: empty file"),
        ("\n\n", r"g\.txt: no examples"),
        (b"ok\tOTHER\tOTHER\n\xff\xfe\tOTHER\tOTHER\n", r"g\.txt:2: not valid UTF-8"),
    ],
)
def test_germeval_bad_input_names_file_and_line(tmp_path, content, message):
    with pytest.raises(DataError, match=message):
        read_germeval(write(tmp_path / "g.txt", content))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: no such file"):
        read_germeval(tmp_path / "nope.txt")


# --- NOHATE ---------------------------------------------------------------------------

NOHATE = (
    "id,comment,class\n"
    "1,Ihr seid alle Idioten,insult\n"
    '2,"Guter Artikel,\ndanke!",neutral\n'
    "3,Die gehören weg,hate\n"
    "4,Interessant,neutral\n"
)
NOHATE_MAP = {"insult": 1, "hate": 1, "neutral": 0}


def test_nohate_maps_classes_to_binary_and_numbers_rows_by_first_line(tmp_path):
    path = write(tmp_path / "n.csv", NOHATE)
    assert read_nohate(path, "comment", "class", NOHATE_MAP) == [
        Example("Ihr seid alle Idioten", 1, f"{path}:2"),
        Example("Guter Artikel,\ndanke!", 0, f"{path}:3"),
        Example("Die gehören weg", 1, f"{path}:5"),
        Example("Interessant", 0, f"{path}:6"),
    ]


def test_nohate_unknown_class_names_its_line(tmp_path):
    path = write(tmp_path / "n.csv", NOHATE)
    with pytest.raises(DataError, match=r"n\.csv:5: column 'class': unknown label 'hate'"):
        read_nohate(path, "comment", "class", {"insult": 1, "neutral": 0})


@pytest.mark.parametrize(
    "label_map, message",
    [({}, "needs a label map"), ({"insult": 2, "neutral": 0}, "must be 0 or 1")],
)
def test_nohate_needs_a_binary_label_map(tmp_path, label_map, message):
    with pytest.raises(DataError, match=message):
        read_nohate(write(tmp_path / "n.csv", NOHATE), "comment", "class", label_map)


def test_nohate_missing_column_is_named(tmp_path):
    with pytest.raises(DataError, match=r"n\.csv:2: no column 'text' \(found \['class', 'comment', 'id'\]\)"):
        read_nohate(write(tmp_path / "n.csv", NOHATE), "text", "class", NOHATE_MAP)


def test_nohate_lm_reads_lines_or_a_csv_column(tmp_path):
    lines = write(tmp_path / "lm.txt", "erster Kommentar\n\n  \nzweiter Kommentar\n")
    assert read_nohate_lm(lines) == [
        Example("erster Kommentar", None, f"{lines}:1"),
        Example("zweiter Kommentar", None, f"{lines}:4"),
    ]
    table = write(tmp_path / "lm.csv", NOHATE)
    assert [e.text for e in read_nohate_lm(table, "comment")] == [
        "Ihr seid alle Idioten", "Guter Artikel,\ndanke!", "Die gehören weg", "Interessant"
    ]
    assert all(e.label is None for e in read_nohate_lm(table, "comment"))


# --- Generic tables and text ----------------------------------------------------------


def test_tsv_and_jsonl_with_configured_columns(tmp_path):
    tsv = write(tmp_path / "d.tsv", "label\tsentence\n1\tgood\n0\tbad, really\n")
    assert read_table(tsv, "sentence", "label") == [Example("good", 1, f"{tsv}:2"), Example("bad, really", 0, f"{tsv}:3")]
    jsonl = write(tmp_path / "d.jsonl", '{"t": "a", "y": "pos"}\n\n{"t": "b", "y": "neg"}\n')
    assert read_table(jsonl, "t", "y", {"pos": 1, "neg": 0}) == [
        Example("a", 1, f"{jsonl}:1"), Example("b", 0, f"{jsonl}:3")
    ]
    assert read_table(jsonl, "t", None) == [Example("a", None, f"{jsonl}:1"), Example("b", None, f"{jsonl}:3")]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("d.csv", "text,label\na,1\nb,yes\n", r"d\.csv:3: column 'label': label 'yes' is not an integer"),
        ("d.csv", "text,label\na,1\nb,1,extra\n", r"d\.csv:3: 3 fields, the header has 2"),
        ("d.csv", "text,label\n", r"d\.csv: no rows after the header"),
        ("d.csv", "", r"d\.csv: empty file"),
        ("d.csv", b"text,label\na,1\n\xe4b,0\n", r"d\.csv:3: not valid UTF-8 \(invalid continuation byte at column 1\)"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n', r"d\.jsonl:2: invalid JSON"),
        ("d.jsonl", '["a", 1]\n', r"d\.jsonl:1: expected a JSON object, found list"),
        ("d.jsonl", '{"text": 5, "label": 1}\n', r"d\.jsonl:1: column 'text' is not text"),
        ("d.jsonl", '{"text": "a"}\n', r"d\.jsonl:1: no column 'label'"),
    ],
)
def test_table_bad_input(tmp_path, name, content, message):
    with pytest.raises(DataError, match=message):
        read_table(write(tmp_path / name, content))


def test_text_lines_for_mlm(tmp_path):
    path = write(tmp_path / "c.txt", "eins\n\nzwei drei\n")
    assert read_text_lines(path) == [Example("eins", None, f"{path}:1"), Example("zwei drei", None, f"{path}:3")]
    with pytest.raises(DataError, match="no text"):
        read_text_lines(write(tmp_path / "blank.txt", " \n\n"))


def test_parse_label_map():
    assert parse_label_map(" hate=1, a=b=0 ,other=0,") == {"hate": 1, "a=b": 0, "other": 0}
    assert parse_label_map("") == {}
    with pytest.raises(DataError, match="'hate' is not of the form"):
        parse_label_map("hate")
    with pytest.raises(DataError, match="'x' is not an integer"):
        parse_label_map("hate=x")
