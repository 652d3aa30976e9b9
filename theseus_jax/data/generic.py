"""User files: CSV/TSV/JSONL with configurable text and label columns, plain text for MLM.

Every error names the file and the line (or the missing column), so a bad row in a
50,000-line file is found at once. The dataset readers (GermEval, NOHATE) build on
these helpers.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator, Mapping, TextIO

from theseus_jax.data.records import DataError, Example

Row = Mapping[str, object]


def open_text(path: str | Path) -> TextIO:
    """A UTF-8 text handle; a missing or zero-byte file is a `DataError` naming the path."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    return path.open(encoding="utf-8", newline="")


def encoding_error(path: str | Path) -> DataError:
    """The error for a file that is not UTF-8, naming the first bad line.

    Text files decode in blocks, so the decoder's offset does not give the line; this
    rescans the bytes line by line (only on the error path).
    """
    with Path(path).open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return DataError(f"{path}:{number}: not valid UTF-8 ({err.reason} at column {err.start + 1})")
    return DataError(f"{path}: not valid UTF-8")


def numbered_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line break); bad UTF-8 names the file and line."""
    try:
        with open_text(path) as f:
            for number, line in enumerate(f, start=1):
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError:
        raise encoding_error(path) from None


def parse_label_map(spec: str) -> dict[str, int]:
    """'hate=1,other=0' -> {'hate': 1, 'other': 0} (the command-line form of a label mapping)."""
    mapping = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.rpartition("=")
        if not sep or not key.strip():
            raise DataError(f"label_map entry {item!r} is not of the form name=integer")
        try:
            mapping[key.strip()] = int(value)
        except ValueError:
            raise DataError(f"label_map entry {item!r}: {value!r} is not an integer") from None
    return mapping


def to_label(raw: object, label_map: Mapping[str, int] | None, where: str) -> int:
    """The integer label of a raw field: through `label_map` when given, else the field as an integer."""
    value = str(raw).strip()
    if label_map:
        if value not in label_map:
            raise DataError(f"{where}: unknown label {value!r} (the label map knows {sorted(label_map)})")
        return label_map[value]
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: label {value!r} is not an integer; give a label map") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Row]]:
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, found {type(row).__name__}")
        yield number, row


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, Row]]:
    """Rows keyed by the header; the number is the line a row starts on (quoted fields may span lines)."""
    try:
        with open_text(path) as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            if not reader.fieldnames:
                raise DataError(f"{path}: no header line")
            start = reader.line_num + 1
            for row in reader:
                if None in row:
                    width = len(reader.fieldnames)
                    raise DataError(f"{path}:{start}: {width + len(row[None])} fields, the header has {width}")
                yield start, row
                start = reader.line_num + 1
    except UnicodeDecodeError:
        raise encoding_error(path) from None
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def table_rows(path: str | Path) -> Iterator[tuple[int, Row]]:
    """Rows of a CSV, TSV (.tsv/.tab) or JSON-lines (.jsonl/.json) file, by extension."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        return _jsonl_rows(path)
    return _csv_rows(path, "\t" if path.suffix in (".tsv", ".tab") else ",")


def read_table(
    path: str | Path,
    text_column: str = "text",
    label_column: str | None = "label",
    label_map: Mapping[str, int] | None = None,
) -> list[Example]:
    """Examples from named text and label columns; `label_column=None` reads unlabelled text."""
    examples = []
    for number, row in table_rows(path):
        where = f"{path}:{number}"
        for column in filter(None, (text_column, label_column)):
            if column not in row:
                raise DataError(f"{where}: no column {column!r} (found {sorted(row)})")
        text = row[text_column]
        if not isinstance(text, str):
            raise DataError(f"{where}: column {text_column!r} is not text ({text!r})")
        label = to_label(row[label_column], label_map, f"{where}: column {label_column!r}") if label_column else None
        examples.append(Example(text, label, where))
    if not examples:
        raise DataError(f"{path}: no rows after the header")
    return examples


def read_text_lines(path: str | Path) -> list[Example]:
    """Plain text for MLM: one unlabelled text per non-blank line."""
    examples = [Example(line, None, f"{path}:{n}") for n, line in numbered_lines(path) if line.strip()]
    if not examples:
        raise DataError(f"{path}: no text (only blank lines)")
    return examples
