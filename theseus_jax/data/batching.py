"""Tokenise once, then serve length-bucketed, resumable batches of numpy arrays.

Batches are padded to the smallest bucket length that fits (32, 64, 128, 256, 512 by
default): short tweets do not pay for 512 tokens and jit compiles a bounded number of
shapes. Every batch has exactly `batch_size` rows; padding rows carry `example_mask` 0
and `example_index` -1. Shuffling and MLM masking are drawn from (seed, epoch, batch),
so `batches(epoch, start_batch)` after a restart yields exactly what an uninterrupted
run would have seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from theseus_jax.data.masking import MaskingConfig, gather_masked_positions, mask_tokens

BUCKETS = (32, 64, 128, 256, 512)
Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class Encoded:
    """Token ids per text (truncated, with [CLS]/[SEP]) and the untruncated lengths."""

    ids: list[np.ndarray]
    full_lengths: np.ndarray
    max_length: int


def encode(texts: Sequence[str], tokenizer, max_length: int = 512, cache_dir: Path | None = None) -> Encoded:
    """Batched fast tokenisation; cached on disk (keyed by texts, vocabulary and length) if asked."""
    backend = tokenizer.backend_tokenizer
    key = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps([list(texts), backend.to_str(), max_length]).encode()).hexdigest()[:24]
        key = Path(cache_dir) / f"tokens-{digest}.npz"
        if key.exists():
            with np.load(key) as data:
                flat, offsets, full_lengths = data["flat"], data["offsets"], data["full_lengths"]
            return Encoded([flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])], full_lengths, max_length)
    backend.no_truncation()
    backend.no_padding()
    encodings = backend.encode_batch(list(texts), add_special_tokens=True)
    sep = tokenizer.sep_token_id
    full_lengths = np.array([len(e.ids) for e in encodings], np.int32)
    ids = [
        np.asarray(e.ids if len(e.ids) <= max_length else e.ids[: max_length - 1] + [sep], np.int32) for e in encodings
    ]
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
        tmp = key.with_suffix(".tmp.npz")
        np.savez(tmp, flat=np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets=offsets, full_lengths=full_lengths)
        tmp.replace(key)
    return Encoded(ids, full_lengths, max_length)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` tokens."""
    for bucket in sorted(buckets):
        if length <= bucket:
            return bucket
    raise ValueError(f"a sequence of {length} tokens exceeds the largest bucket {max(buckets)}")


class BatchLoader:
    """Fixed-size batches over encoded texts, bucketed by length."""

    def __init__(
        self,
        encoded: Encoded,
        labels: np.ndarray | None,
        batch_size: int,
        pad_token_id: int = 0,
        buckets: Sequence[int] = BUCKETS,
        shuffle: bool = True,
        seed: int = 0,
        masking: MaskingConfig | None = None,
        pool_batches: int = 50,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if labels is not None and len(labels) != len(encoded.ids):
            raise ValueError(f"{len(labels)} labels for {len(encoded.ids)} texts")
        if not encoded.ids:
            raise ValueError("no examples to batch")
        self.ids = encoded.ids
        self.lengths = np.array([len(x) for x in encoded.ids])
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.buckets = tuple(sorted({b for b in buckets if b < encoded.max_length} | {encoded.max_length}))
        self.shuffle = shuffle
        self.seed = seed
        self.masking = masking
        self.pool = batch_size * pool_batches

    def num_batches(self, epoch: int = 0) -> int:
        return -(-len(self.ids) // self.batch_size)

    def _plan(self, epoch: int) -> list[np.ndarray]:
        """Example indices per batch: shuffled, then sorted by length within pools."""
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.ids))
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start : start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        for number, indices in enumerate(self._plan(epoch)):
            if number >= start_batch:
                yield self._collate(indices, epoch, number)

    def _collate(self, indices: np.ndarray, epoch: int, number: int) -> Batch:
        length = bucket_length(int(self.lengths[indices].max()), self.buckets)
        input_ids = np.full((self.batch_size, length), self.pad_token_id, np.int32)
        attention_mask = np.zeros((self.batch_size, length), np.int32)
        for row, i in enumerate(indices):
            input_ids[row, : self.lengths[i]] = self.ids[i]
            attention_mask[row, : self.lengths[i]] = 1
        example_index = np.full(self.batch_size, -1, np.int32)
        example_index[: len(indices)] = indices
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
            "example_mask": (example_index >= 0).astype(np.float32),
            "example_index": example_index,
        }
        if self.masking is not None:
            rng = np.random.default_rng([self.seed, epoch, number, 1])
            batch["input_ids"], labels = mask_tokens(input_ids, attention_mask, self.masking, rng)
            batch["masked_positions"], batch["labels"] = gather_masked_positions(labels)
        elif self.labels is not None:
            labels = np.zeros(self.batch_size, np.int32)
            labels[: len(indices)] = self.labels[indices]
            batch["labels"] = labels
        return batch


def masking_config(tokenizer, probability: float = 0.15) -> MaskingConfig:
    """BERT's masking for a tokenizer's vocabulary and special tokens."""
    return MaskingConfig(
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        special_token_ids=tuple(sorted(set(tokenizer.all_special_ids))),
        probability=probability,
    )
