"""NOHATE: comments with a multi-class label mapped to OFFENSE (1) / OTHER (0); NOHATE LM: unlabelled."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from theseus_jax.data.generic import read_table, read_text_lines
from theseus_jax.data.records import DataError, Example

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".json")


def read_nohate(path: str | Path, text_column: str, label_column: str, label_map: Mapping[str, int]) -> list[Example]:
    """A CSV of comments; every class of `label_column` must be in `label_map` (values 0 or 1)."""
    if not label_map:
        raise DataError(f"{path}: NOHATE needs a label map from its classes to 1 (OFFENSE) / 0 (OTHER)")
    bad = {k: v for k, v in label_map.items() if v not in (0, 1)}
    if bad:
        raise DataError(f"{path}: NOHATE is binary; label map values must be 0 or 1, got {bad}")
    return read_table(path, text_column, label_column, label_map)


def read_nohate_lm(path: str | Path, text_column: str = "text") -> list[Example]:
    """Unlabelled comments: the text column of a CSV/TSV/JSONL, else one comment per line."""
    if Path(path).suffix in TABLE_SUFFIXES:
        return read_table(path, text_column, None)
    return read_text_lines(path)
