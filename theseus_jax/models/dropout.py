"""The model's dropout: one random byte per element, the rate rounded to a multiple of 1/256.

`Dropout` is every dropout of `models.bert` (embeddings, attention probabilities, both
residual branches, classifier heads); `dropout` is the function behind it.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


DROPOUT_LEVELS = 256  # one random byte per element


def dropout_rate(rate: float) -> float:
    """The rate `dropout` applies: `rate` rounded to the nearest multiple of 1/256."""
    return round(DROPOUT_LEVELS * rate) / DROPOUT_LEVELS


def dropout(key: Array, x: Array, rate: float) -> Array:
    """Inverted dropout at `dropout_rate(rate)`: each element keeps x / (1 - that rate) where its
    random byte is below 256 (1 - that rate), else 0.

    Four bytes come from each random 32-bit word: a quarter of the random bits of
    `nn.Dropout` (one word per element for its float uniform), whose threefry generator
    was most of dropout's cost in a training step (BENCHMARKS.md).
    """
    keep = round(DROPOUT_LEVELS * (1 - dropout_rate(rate)))
    if keep == DROPOUT_LEVELS:
        return x
    if keep == 0:
        return jnp.zeros_like(x)
    return jnp.where(random_bytes(key, x.shape) < keep, x * (DROPOUT_LEVELS / keep), jnp.zeros((), x.dtype))


def random_bytes(key: Array, shape: tuple[int, ...]) -> Array:
    """Uniform uint8 draws, four from each of `jax.random.bits`' 32-bit words."""
    size = math.prod(shape)
    words = jax.random.bits(key, (-(-size // 4),), jnp.uint32)
    return lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:size].reshape(shape)


class Dropout(nn.Module):
    """`dropout` with `nn.Dropout`'s interface (its key from the "dropout" collection)."""

    rate: float
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool | None = None) -> Array:
        if nn.merge_param("deterministic", self.deterministic, deterministic) or dropout_rate(self.rate) == 0:
            return x  # no key drawn: a model without dropout needs no "dropout" rng
        return dropout(self.make_rng("dropout"), x, self.rate)
