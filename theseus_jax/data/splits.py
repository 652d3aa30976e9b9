"""Seeded stratified splits (80/20 train/test by default, optional validation share)."""

from __future__ import annotations

import numpy as np

from theseus_jax.data.records import DataError, Example


def stratified_split(
    examples: list[Example], test_share: float = 0.2, seed: int = 0, validation_share: float = 0.0
) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, test, validation), each class split in the same proportions.

    Unlabelled examples form one stratum. Order within each part follows the input.
    """
    if not 0.0 < test_share < 1.0 or not 0.0 <= validation_share < 1.0 - test_share:
        raise DataError(f"bad split shares: test {test_share}, validation {validation_share}")
    rng = np.random.default_rng(seed)
    part = np.zeros(len(examples), np.int8)  # 0 train, 1 test, 2 validation
    labels = np.array([-1 if e.label is None else e.label for e in examples])
    for label in np.unique(labels):
        members = rng.permutation(np.nonzero(labels == label)[0])
        n_test = int(round(test_share * len(members)))
        n_val = int(round(validation_share * len(members)))
        part[members[:n_test]] = 1
        part[members[n_test : n_test + n_val]] = 2
    pick = lambda k: [e for e, p in zip(examples, part) if p == k]
    return pick(0), pick(1), pick(2)
