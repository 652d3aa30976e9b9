"""Candidate changes to the training step, applied only inside a benchmark worker, so each
can be measured against the unchanged step before anything lands in the model code.

`apply(name)` installs one; `bench_training_candidates` times it beside the baseline.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from theseus_jax.models import bert


class _DenseParams(nn.Module):
    """The parameters of an `nn.Dense` (same names, shapes and init), returned unapplied."""

    config: bert.BertConfig
    features: int

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        init = nn.initializers.normal(self.config.initializer_range)
        kernel = self.param("kernel", init, (in_features, self.features), jnp.float32)
        return kernel, self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)


class FusedQKVSelfAttention(bert.BertSelfAttention):
    """One [H, 3H] projection built from the separate query/key/value kernels at compute time
    (parameter names unchanged), instead of three [H, H] matmuls."""

    @nn.compact
    def __call__(self, hidden: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        heads, dtype = cfg.num_attention_heads, cfg.compute_dtype
        head_dim = cfg.hidden_size // heads
        parts = [_DenseParams(cfg, cfg.hidden_size, name=n)(hidden.shape[-1]) for n in ("query", "key", "value")]
        kernel = jnp.concatenate([k for k, _ in parts], axis=1).astype(dtype)
        qkv = jnp.dot(hidden.astype(dtype), kernel) + jnp.concatenate([b for _, b in parts]).astype(dtype)
        query, key, value = (x.reshape(x.shape[:-1] + (heads, head_dim)) for x in jnp.split(qkv, 3, axis=-1))
        dropout = bert.Dropout(cfg.attention_probs_dropout_prob, deterministic=deterministic)
        return bert.scaled_dot_product_attention(query, key, value, bias, dropout)


class HeadMajorSelfAttention(bert.BertSelfAttention):
    """Query/key/value moved to [B, heads, L, d] once, so both attention matmuls are plain
    batched matmuls over (B, heads) without layout changes inside the dots."""

    @nn.compact
    def __call__(self, hidden: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads

        def split(x: jax.Array) -> jax.Array:  # [B, L, H] -> [B, heads, L, d]
            return x.reshape(x.shape[:-1] + (heads, head_dim)).transpose(0, 2, 1, 3)

        query = split(bert._dense(cfg, cfg.hidden_size, "query")(hidden))
        key = split(bert._dense(cfg, cfg.hidden_size, "key")(hidden))
        value = split(bert._dense(cfg, cfg.hidden_size, "value")(hidden))
        scores = jnp.matmul(query, key.transpose(0, 1, 3, 2), preferred_element_type=jnp.float32)
        scores = scores / jnp.sqrt(jnp.float32(head_dim)) + bias
        probs = jax.nn.softmax(scores, axis=-1)
        probs = bert.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        context = jnp.matmul(probs.astype(value.dtype), value).transpose(0, 2, 1, 3)
        return context.reshape(context.shape[:2] + (cfg.hidden_size,))


def _use_flax_dropout() -> None:
    """The model's dropout before issue 22: `nn.Dropout` (a threefry float uniform per element)."""
    bert.Dropout = nn.Dropout


def _use_attention(cls: type[nn.Module]) -> Callable[[], None]:
    def install() -> None:
        bert.BertSelfAttention = cls  # BertAttention looks the class up when it runs

    return install


CANDIDATES: dict[str, Callable[[], None]] = {
    "fused_qkv": _use_attention(FusedQKVSelfAttention),
    "head_major_attention": _use_attention(HeadMajorSelfAttention),
    "flax_dropout": _use_flax_dropout,
}


def apply(name: str | None) -> None:
    if name:
        CANDIDATES[name]()
