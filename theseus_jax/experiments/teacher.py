"""A teacher's logits for every training example: computed once per run, kept in its folder.

The teacher (a fine-tuned classifier) runs without dropout, so its logits per training
example are fixed. One forward pass over the training set writes them to
`<run>/teacher_logits.npz` (atomically, with the teacher's path and the example count);
a resumed run reads them back without loading the teacher at all. `WithTeacherLogits`
puts each batch's rows into the batch (`teacher_logits` [B, C]; padding rows get row 0,
which their zero `example_mask` ignores).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm

from theseus_jax import atomic
from theseus_jax.data.batching import BatchLoader
from theseus_jax.training import parallel, steps

log = logging.getLogger("theseus_jax")
FILE = "teacher_logits.npz"
Batch = dict[str, np.ndarray]


def compute(model: nn.Module, params: Any, loader: BatchLoader, num_devices: int = 0) -> np.ndarray:
    """[N, C] logits of every training example, in example order (epoch 0 of a shuffled
    loader holds every example exactly once)."""
    mesh = parallel.make_mesh(num_devices)
    logits_step = jax.jit(steps.make_logits_step(model), out_shardings=parallel.replicated(mesh))
    params = parallel.replicate(params, mesh)
    out: np.ndarray | None = None
    seen = np.zeros(len(loader.ids), bool)
    for batch in tqdm(loader.batches(0), total=loader.num_batches(0), desc="teacher logits", leave=False, disable=None):
        logits = np.asarray(jax.device_get(logits_step(params, parallel.shard_batch(batch, mesh))), np.float32)
        if out is None:
            out = np.zeros((len(loader.ids), logits.shape[-1]), np.float32)
        rows = batch["example_index"] >= 0
        out[batch["example_index"][rows]] = logits[rows]
        seen[batch["example_index"][rows]] = True
    assert out is not None and seen.all(), "the loader's first epoch missed training examples"
    return out


def stored_or_computed(
    workdir: Path, teacher_dir: str, load: Callable[[], tuple[nn.Module, Any]], loader: BatchLoader,
    num_devices: int = 0,
) -> np.ndarray:
    """The run's stored teacher logits when they are this teacher's for this training set,
    else a fresh forward pass of the teacher `load()` returns (model, params), stored by
    process 0: a resumed run never loads the teacher's weights."""
    path = Path(workdir) / FILE
    if path.exists():
        with np.load(path) as stored:
            if str(stored["teacher"]) == str(teacher_dir) and stored["logits"].shape[0] == len(loader.ids):
                log.info("teacher logits: reusing %s", path)
                return stored["logits"]
        log.info("teacher logits: %s belongs to another teacher or training set; computing them again", path)
    logits = compute(*load(), loader, num_devices)
    if parallel.is_writer():
        Path(workdir).mkdir(parents=True, exist_ok=True)
        with atomic.open_atomic(path, "wb") as f:
            np.savez(f, logits=logits, teacher=np.asarray(str(teacher_dir)))
    return logits


class WithTeacherLogits:
    """A training loader whose batches carry the teacher's logits of their rows."""

    def __init__(self, loader: BatchLoader, logits: np.ndarray) -> None:
        if logits.shape[0] != len(loader.ids):
            raise ValueError(f"{logits.shape[0]} teacher logits for {len(loader.ids)} training examples")
        self.loader, self.logits = loader, logits

    def num_batches(self, epoch: int) -> int:
        return self.loader.num_batches(epoch)

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        for batch in self.loader.batches(epoch, start_batch):
            yield {**batch, "teacher_logits": self.logits[np.maximum(batch["example_index"], 0)]}
