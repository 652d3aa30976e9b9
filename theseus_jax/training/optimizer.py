"""AdamW with linear warm-up/decay over the trainable partition only.

Freezing is an optax partition: trainable leaves get clipping + AdamW, frozen leaves
`set_to_zero` and hold no optimizer state. Because clipping runs inside the trainable
branch, the global norm covers trainable leaves only and XLA drops the frozen weights'
gradient matmuls from the compiled step.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

Params = dict[str, Any]

# Predecessor layers of a Theseus model never train.
FROZEN_ALWAYS = (r"encoder/predecessor_\d+/",)

# Named choices of what trains, as regexes over '/'-joined parameter paths.
TRAINABLE_PRESETS: dict[str, tuple[str, ...]] = {
    # What the original code hands its optimizer: the successor layers alone.
    "successor": (r"encoder/successor_\d+/",),
    # The successor plus the MLM head: for MLM compression of a checkpoint that has no MLM
    # head (it starts random and must learn); downstream it is the successor alone.
    "successor_mlm_head": (r"encoder/successor_\d+/", r"^cls/"),
    # Successor plus embeddings, pooler and the task head.
    "successor_embeddings_heads": (
        r"encoder/successor_\d+/",
        r"embeddings/",
        r"pooler/",
        r"^cls/",
        r"^classifier/",
    ),
    # Everything but the predecessor (plain fine-tuning of a non-Theseus model).
    "all": (r".",),
    # Plain fine-tuning with the word-embedding table frozen (and an MLM decoder tied to it):
    # for a large vocabulary its dense gradient and AdamW update are a fixed cost per step
    # (e5-small's 250k x 384 table: 8-17% of a batch-32 step, BENCHMARKS.md).
    "all_but_word_embeddings": (r"^(?!.*embeddings/word_embeddings/)",),
}


def trainable_mask(params: Params, trainable: str | Sequence[str]) -> Params:
    """A tree of bools, True where a leaf trains.

    `trainable` is a preset name (see `TRAINABLE_PRESETS`) or a list of regexes searched
    in each leaf's path; predecessor layers are frozen whatever it says.
    """
    if isinstance(trainable, str) and trainable not in TRAINABLE_PRESETS:
        raise ValueError(f"unknown trainable preset {trainable!r}; use one of {sorted(TRAINABLE_PRESETS)}")
    patterns = TRAINABLE_PRESETS[trainable] if isinstance(trainable, str) else tuple(trainable)
    flat = traverse_util.flatten_dict(params, sep="/")
    mask = {
        path: any(re.search(p, path) for p in patterns) and not any(re.search(p, path) for p in FROZEN_ALWAYS)
        for path in flat
    }
    if not any(mask.values()):
        raise ValueError(f"trainable={trainable!r} matches no parameter")
    return traverse_util.unflatten_dict(mask, sep="/")


def decay_mask(params: Params) -> Params:
    """Weight decay on kernels and embeddings; never on biases or LayerNorm."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict(
        {path: not (path.endswith("bias") or "LayerNorm" in path) for path in flat}, sep="/"
    )


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """Linear warm-up to `peak`, then linear decay to 0 at `total_steps`, and 0 after.

    The decay scales the steps left (an exact integer, 0 at the end) rather than optax's
    `1 - step / n`: under jit, XLA turns that division into a multiplication by a rounded
    1/n, and the rate ended slightly below 0 (-1.5e-8 * peak for n = 5) and stayed there."""
    warmup_steps = min(warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step: jax.Array) -> jax.Array:
        warm = jnp.minimum(step / warmup_steps, 1.0) if warmup_steps else 1.0
        return peak * jnp.minimum(warm, jnp.clip(total_steps - step, 0, decay_steps) / decay_steps)

    return schedule


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax's clipping as one scalar factor, max_norm / max(norm, max_norm) (exactly 1 below
    the threshold): XLA multiplies it into each Adam update instead of writing every gradient
    divided by the norm as a second copy (optax's form), 0.77 GB for a 250k x 768 embedding."""

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        norm = optax.tree.norm(updates)
        scale = max_norm / jnp.maximum(norm, max_norm)
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(
    params: Params,
    trainable: str | Sequence[str],
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
) -> tuple[optax.GradientTransformation, Params]:
    """The optimizer and the trainable mask it was built from."""
    mask = trainable_mask(params, trainable)
    inner = optax.chain(
        clip_by_global_norm(max_grad_norm) if max_grad_norm else optax.identity(),
        optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-6, weight_decay=weight_decay, mask=decay_mask),
    )
    labels = jax.tree.map(lambda train: "train" if train else "freeze", mask)
    return optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()}, labels), mask


def apply_trainable_updates(params: Params, updates: Params, mask: Params) -> Params:
    """Adds updates to trainable leaves; frozen leaves are passed through untouched
    (bit-identical, and no 0-add over the frozen weights every step)."""
    return jax.tree.map(lambda p, u, train: p + u.astype(p.dtype) if train else p, params, updates, mask)

