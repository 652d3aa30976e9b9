"""Readers for the study's datasets and for user files, each yielding `Example`s.

Every error names the file and the line (or the missing column), so a bad row in a
50,000-line file is found at once.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator, Mapping

from theseus_jax.data.records import DataError, Example

GERMEVAL_LABELS = {"OFFENSE": 1, "OTHER": 0}


def _open_text(path: Path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return path.open(encoding="utf-8", newline="")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from err


def read_germeval(path: str | Path) -> list[Example]:
    """GermEval 2018 / 2019 Task 2: `text<TAB>OFFENSE|OTHER<TAB>fine label`, positive = OFFENSE."""
    examples = []
    for number, line in _lines(Path(path)):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: expected text<TAB>coarse label<TAB>fine label, found {len(fields)} field(s)")
        if fields[1] not in GERMEVAL_LABELS:
            raise DataError(f"{path}:{number}: unknown label {fields[1]!r} (expected OFFENSE or OTHER)")
        examples.append(Example(fields[0], GERMEVAL_LABELS[fields[1]], f"{path}:{number}"))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def parse_label_map(spec: str) -> dict[str, int]:
    """'hate=1,other=0' -> {'hate': 1, 'other': 0}."""
    mapping = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.rpartition("=")
        if not sep or not key.strip():
            raise DataError(f"label_map entry {item!r} is not of the form name=integer")
        mapping[key.strip()] = int(value)
    return mapping


def _label(raw: str, label_map: Mapping[str, int] | None, where: str) -> int:
    raw = raw.strip()
    if label_map:
        if raw not in label_map:
            raise DataError(f"{where}: unknown label {raw!r} (label_map knows {sorted(label_map)})")
        return label_map[raw]
    try:
        return int(raw)
    except ValueError:
        raise DataError(f"{where}: label {raw!r} is not an integer; give a label_map") from None


def read_table(
    path: str | Path,
    text_column: str = "text",
    label_column: str | None = "label",
    label_map: Mapping[str, int] | None = None,
) -> list[Example]:
    """CSV, TSV (by extension) or JSONL with named text and label columns; label None = unlabelled."""
    path = Path(path)
    rows: Iterator[tuple[int, Mapping[str, object]]]
    if path.suffix in (".jsonl", ".json"):
        def jsonl() -> Iterator[tuple[int, Mapping[str, object]]]:
            for number, line in _lines(path):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        rows = jsonl()
    else:
        rows = _csv_rows(path, "\t" if path.suffix in (".tsv", ".tab") else ",")
    examples = []
    for number, row in rows:
        where = f"{path}:{number}"
        for column in filter(None, (text_column, label_column)):
            if column not in row:
                raise DataError(f"{where}: no column {column!r} (found {sorted(row)})")
        text = row[text_column]
        if not isinstance(text, str):
            raise DataError(f"{where}: column {text_column!r} is not text")
        label = _label(str(row[label_column]), label_map, where) if label_column else None
        examples.append(Example(text, label, where))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, Mapping[str, object]]]:
    try:
        with _open_text(path) as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            if not reader.fieldnames:
                raise DataError(f"{path}: empty file (no header)")
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV ({err})") from err


def read_text_lines(path: str | Path) -> list[Example]:
    """Plain text for MLM: one text per non-empty line."""
    examples = [Example(line, None, f"{path}:{n}") for n, line in _lines(Path(path)) if line.strip()]
    if not examples:
        raise DataError(f"{path}: no text")
    return examples


def read_nohate(path: str | Path, text_column: str, label_column: str, label_map: Mapping[str, int]) -> list[Example]:
    """NOHATE comments: a CSV whose multi-class label column is mapped to OFFENSE (1) / OTHER (0)."""
    if not label_map:
        raise DataError(f"{path}: NOHATE needs a label_map from its classes to 0/1")
    return read_table(path, text_column, label_column, label_map)


def read_nohate_lm(path: str | Path, text_column: str = "text") -> list[Example]:
    """NOHATE LM: unlabelled comments, one per line, or the text column of a CSV/JSONL."""
    path = Path(path)
    if path.suffix in (".csv", ".tsv", ".jsonl", ".json"):
        return read_table(path, text_column, None)
    return read_text_lines(path)
