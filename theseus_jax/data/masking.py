"""BERT's masked-LM corruption: 15% of non-special tokens, 80% [MASK], 10% random, 10% kept."""

from __future__ import annotations

import dataclasses

import numpy as np

IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """What to corrupt and how; `special_token_ids` ([CLS], [SEP], [PAD], ...) are never selected."""

    mask_token_id: int
    vocab_size: int
    special_token_ids: tuple[int, ...]
    probability: float = 0.15
    mask_share: float = 0.8
    random_share: float = 0.1


def masking_config(tokenizer, probability: float = 0.15) -> MaskingConfig:
    """BERT's masking for a tokenizer's vocabulary and special tokens."""
    return MaskingConfig(
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        special_token_ids=tuple(sorted(set(tokenizer.all_special_ids))),
        probability=probability,
    )


def mask_tokens(
    input_ids: np.ndarray, attention_mask: np.ndarray, config: MaskingConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted ids, labels): labels hold the original id where selected, -100 elsewhere.

    Each attended non-special token is selected with `probability`; a selected token
    becomes [MASK] with `mask_share`, a uniformly drawn vocabulary id with
    `random_share`, and stays itself otherwise (it is still predicted).
    """
    candidates = (attention_mask > 0) & ~np.isin(input_ids, config.special_token_ids)
    selected = candidates & (rng.random(input_ids.shape) < config.probability)
    action = rng.random(input_ids.shape)
    to_mask = selected & (action < config.mask_share)
    to_random = selected & (action >= config.mask_share) & (action < config.mask_share + config.random_share)
    corrupted = input_ids.astype(np.int32, copy=True)
    corrupted[to_mask] = config.mask_token_id
    corrupted[to_random] = rng.integers(0, config.vocab_size, int(to_random.sum()))
    labels = np.where(selected, input_ids, IGNORE_INDEX).astype(np.int32)
    return corrupted, labels


def gather_masked_positions(labels: np.ndarray, multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Positions [B, P] of the labelled tokens and their labels [B, P] (-100 where padded).

    P is the batch's largest count rounded up to `multiple` (at most L), so an MLM head
    can run on P rows instead of L while only a few shapes get compiled.
    """
    selected = labels != IGNORE_INDEX
    batch, length = labels.shape
    most = int(selected.sum(axis=1).max(initial=0))
    width = min(length, max(multiple, -(-most // multiple) * multiple))
    positions = np.zeros((batch, width), np.int32)
    gathered = np.full((batch, width), IGNORE_INDEX, np.int32)
    for row in range(batch):
        index = np.nonzero(selected[row])[0]
        positions[row, : len(index)] = index
        gathered[row, : len(index)] = labels[row, index]
    return positions, gathered
