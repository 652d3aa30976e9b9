"""GermEval 2018 and GermEval 2019 Task 2: `text<TAB>OFFENSE|OTHER<TAB>fine label`, one tweet a line."""

from __future__ import annotations

from pathlib import Path

from theseus_jax.data.generic import numbered_lines
from theseus_jax.data.records import DataError, Example

GERMEVAL_LABELS = {"OFFENSE": 1, "OTHER": 0}


def read_germeval(path: str | Path) -> list[Example]:
    """Tweets with the coarse label; OFFENSE is the positive class (1). Blank lines are skipped."""
    examples = []
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(
                f"{path}:{number}: expected text<TAB>coarse label<TAB>fine label, found {len(fields)} field(s)"
            )
        coarse = fields[1].strip()
        if coarse not in GERMEVAL_LABELS:
            raise DataError(f"{path}:{number}: unknown label {coarse!r} (expected OFFENSE or OTHER)")
        examples.append(Example(fields[0], GERMEVAL_LABELS[coarse], f"{path}:{number}"))
    if not examples:
        raise DataError(f"{path}: no examples (only blank lines)")
    return examples
