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


def gather_masked_positions(labels: np.ndarray, micro_batches: int = 1, multiple: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions [B, P] of the labelled tokens and their labels [B, P] (-100 where padded).

    The MLM head (a vocabulary-wide projection and softmax: with a 250k vocabulary the
    costliest part of the step) then runs on B * P rows instead of B * L. A position indexes
    the flattened tokens [B / m * L] of its row's micro-batch (rows i, i + m, ... form
    micro-batch i, as `training.steps.micro_batches` splits them), and each micro-batch's
    labelled tokens are spread over all its rows' slots, so P is about the mean count per
    row rather than the largest, rounded up to `multiple` so only a few shapes get compiled.
    """
    batch, length = labels.shape
    if batch % micro_batches:
        raise ValueError(f"{batch} batch rows do not split into {micro_batches} micro-batches")
    rows = batch // micro_batches
    members = [np.arange(i, batch, micro_batches) for i in range(micro_batches)]
    flat = [labels[m].reshape(-1) for m in members]  # micro-batch i's tokens, row-major
    index = [np.flatnonzero(f != IGNORE_INDEX) for f in flat]
    most = max(len(i) for i in index)
    width = max(multiple, -(-most // (rows * multiple)) * multiple)
    positions = np.zeros((batch, width), np.int32)
    gathered = np.full((batch, width), IGNORE_INDEX, np.int32)
    for m, f, i in zip(members, flat, index):
        slots, slot_labels = np.zeros(rows * width, np.int32), np.full(rows * width, IGNORE_INDEX, np.int32)
        slots[: len(i)], slot_labels[: len(i)] = i, f[i]
        positions[m], gathered[m] = slots.reshape(rows, width), slot_labels.reshape(rows, width)
    return positions, gathered
