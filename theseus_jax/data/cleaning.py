"""Cleaning as in the source study: empty texts, exact duplicates, conflicting labels."""

from __future__ import annotations

import collections
import dataclasses

from theseus_jax.data.records import Example


@dataclasses.dataclass(frozen=True)
class CleaningReport:
    """How many examples each rule removed, for the statistics report."""

    kept: int
    empty: int
    duplicates: int
    conflicting: int


def clean(examples: list[Example]) -> tuple[list[Example], CleaningReport]:
    """Drops empty or whitespace-only texts, exact duplicate (text, label) observations
    (keeping the first), and every copy of a text that occurs with different labels."""
    non_empty = [e for e in examples if e.text.strip()]
    seen: set[tuple[str, int | None]] = set()
    unique = []
    for e in non_empty:
        if (e.text, e.label) not in seen:
            seen.add((e.text, e.label))
            unique.append(e)
    labels_of: dict[str, set] = collections.defaultdict(set)
    for e in unique:
        labels_of[e.text].add(e.label)
    kept = [e for e in unique if len(labels_of[e.text]) == 1]
    return kept, CleaningReport(
        kept=len(kept),
        empty=len(examples) - len(non_empty),
        duplicates=len(non_empty) - len(unique),
        conflicting=len(unique) - len(kept),
    )
