"""The published GermEval 2018 counts on the real files (skipped where ../shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from theseus_jax.data.germeval import read_germeval

GERMEVAL_DIR = Path(__file__).parents[2] / "shared" / "data" / "germeval2018"


@pytest.mark.data
@pytest.mark.skipif(not GERMEVAL_DIR.is_dir(), reason=f"real data absent: {GERMEVAL_DIR}")
@pytest.mark.parametrize(
    "name, count, offense",
    [("germeval2018.training.txt", 5009, 1688), ("germeval2018.test.txt", 3532, 1202)],
)
def test_published_counts(name, count, offense):
    examples = read_germeval(GERMEVAL_DIR / name)
    assert len(examples) == count
    assert sum(e.label for e in examples) == offense
    assert all(e.text.strip() for e in examples)
