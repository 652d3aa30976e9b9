"""Length-bucketed, resumable batches of numpy arrays over encoded texts.

Batches are padded to the smallest bucket length that fits (32, 64, 128, 256, 512 by
default): short tweets do not pay for 512 tokens and jit compiles a bounded number of
shapes; `buckets=(512,)` pads everything to one length instead. Every batch has exactly
`batch_size` rows; rows that pad the last partial batch carry `example_mask` 0 and
`example_index` -1. Shuffling and MLM masking are drawn from (seed, epoch, batch), so
`batches(epoch, start_batch)` after a restart yields exactly what an uninterrupted run
would have seen.

A batch: `input_ids`, `attention_mask`, `token_type_ids` int32 [B, L]; `example_mask`
float32 [B]; `example_index` int32 [B] (row in the encoded texts, -1 for padding rows);
`labels` int32 [B] for classification, or for MLM int32 [B, L] with -100 where nothing
is predicted (with `gather_masked`: `masked_positions` and `labels` int32 [B, P], positions
into the flattened tokens of each of `micro_batches` micro-batches).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from theseus_jax.data.encoding import Encoded, encode
from theseus_jax.data.masking import MaskingConfig, gather_masked_positions, mask_tokens, masking_config

__all__ = ["BUCKETS", "Batch", "BatchLoader", "bucket_length", "encode", "masking_config"]

BUCKETS = (32, 64, 128, 256, 512)
Batch = dict[str, np.ndarray]
# Seeds masking as [seed, epoch, batch, 1], apart from the plan's [seed, epoch].
_MASKING_STREAM = 1


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` tokens."""
    for bucket in sorted(buckets):
        if length <= bucket:
            return bucket
    raise ValueError(f"a sequence of {length} tokens exceeds the largest bucket {max(buckets)}")


class BatchLoader:
    """Fixed-size batches over encoded texts, grouped by length, resumable at (epoch, batch).

    With shuffling, each epoch permutes the examples from (seed, epoch), sorts each
    chunk of `pool_batches` batches by length, cuts it into batches and shuffles the
    batch order: similar lengths share a batch, so little padding is wasted. Without
    shuffling (evaluation), batches go in global length order; `example_index` maps rows
    back to the input order.

    Use `batches(epoch, start_batch)` directly, or iterate the loader: `iter(loader)`
    serves the rest of the current epoch and moves the position that `state()` reports
    and `restore()` sets.
    """

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
        drop_remainder: bool = False,
        gather_masked: bool = False,
        micro_batches: int = 1,
        pool_batches: int = 50,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if labels is not None and len(labels) != len(encoded.ids):
            raise ValueError(f"{len(labels)} labels for {len(encoded.ids)} texts")
        if labels is not None and masking is not None:
            raise ValueError("give labels (classification) or masking (MLM), not both")
        if not encoded.ids:
            raise ValueError("no examples to batch")
        if drop_remainder and len(encoded.ids) < batch_size:
            raise ValueError(f"drop_remainder with {len(encoded.ids)} examples < batch_size {batch_size}: no batches")
        self.ids = encoded.ids
        self.lengths = encoded.lengths
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.buckets = tuple(sorted({b for b in buckets if b < encoded.max_length} | {encoded.max_length}))
        self.shuffle = shuffle
        self.seed = seed
        self.masking = masking
        self.drop_remainder = drop_remainder
        self.gather_masked = gather_masked
        self.micro_batches = micro_batches
        self.pool = batch_size * pool_batches
        self.epoch = 0
        self.batch = 0

    def num_batches(self, epoch: int = 0) -> int:
        """Batches per epoch (the same for every epoch)."""
        full, rest = divmod(len(self.ids), self.batch_size)
        return full + (rest > 0 and not self.drop_remainder)

    def _plan(self, epoch: int) -> list[np.ndarray]:
        """Example indices per batch for one epoch."""
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            plan = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        else:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.ids))
            plan = []
            for start in range(0, len(order), self.pool):
                pool = order[start : start + self.pool]
                pool = pool[np.argsort(self.lengths[pool], kind="stable")]
                plan += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
            plan = [plan[i] for i in rng.permutation(len(plan))]
        if self.drop_remainder:
            plan = [indices for indices in plan if len(indices) == self.batch_size]
        return plan

    def batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """Batches `start_batch`, `start_batch + 1`, ... of `epoch`."""
        for number, indices in enumerate(self._plan(epoch)):
            if number >= start_batch:
                yield self._collate(indices, epoch, number)

    def __len__(self) -> int:
        return self.num_batches(self.epoch)

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch; the position advances as batches are taken."""
        if self.batch >= self.num_batches(self.epoch):
            self.epoch, self.batch = self.epoch + 1, 0
        epoch = self.epoch
        for batch in self.batches(epoch, self.batch):
            self.batch += 1
            yield batch
        self.epoch, self.batch = epoch + 1, 0

    def state(self) -> dict[str, int]:
        """The position of the next batch, for a checkpoint."""
        return {"epoch": self.epoch, "batch": self.batch}

    def restore(self, state: dict[str, int]) -> None:
        """Continues from a `state()`: the next batch served is the one that was due then."""
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

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
            rng = np.random.default_rng([self.seed, epoch, number, _MASKING_STREAM])
            batch["input_ids"], batch["labels"] = mask_tokens(input_ids, attention_mask, self.masking, rng)
            if self.gather_masked:
                batch["masked_positions"], batch["labels"] = gather_masked_positions(batch["labels"], self.micro_batches)
        elif self.labels is not None:
            labels = np.zeros(self.batch_size, np.int32)
            labels[: len(indices)] = self.labels[indices]
            batch["labels"] = labels
        return batch
