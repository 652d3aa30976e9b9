"""Replacement-rate schedules and the per-step Bernoulli draw.

Schedules are pure functions of the (traced) step, so p changes without recompiling.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[jax.Array | int], jax.Array]


def constant_schedule(rate: float, replacing_steps: int | None = None) -> Schedule:
    """p = `rate` until `replacing_steps`, then 1 (BERT-of-Theseus' constant scheduler)."""
    _check_rate("rate", rate)

    def schedule(step: jax.Array | int) -> jax.Array:
        p = jnp.asarray(rate, jnp.float32)
        if replacing_steps is None:
            return p
        return jnp.where(jnp.asarray(step) < replacing_steps, p, 1.0)

    return schedule


def curriculum_slope(total_steps: int, starting_rate: float, ratio_replacement_changes: float) -> float:
    """k such that p = k*s + b reaches 1 after `ratio_replacement_changes` of `total_steps`."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0.0 < ratio_replacement_changes <= 1.0:
        raise ValueError(f"ratio_replacement_changes must be in (0, 1], got {ratio_replacement_changes}")
    return (1.0 - starting_rate) / (ratio_replacement_changes * total_steps)


def curriculum_schedule(
    starting_rate: float = 0.1,
    *,
    slope: float | None = None,
    total_steps: int | None = None,
    ratio_replacement_changes: float = 0.85,
) -> Schedule:
    """p = min(1, k*s + b): the linear curriculum of BERT-of-Theseus.

    Give the slope k directly, or `total_steps` and the share of steps after which p
    reaches 1 (`ratio_replacement_changes`, default 85%; the remaining steps fine-tune the
    successor alone).
    """
    _check_rate("starting_rate", starting_rate)
    if (slope is None) == (total_steps is None):
        raise ValueError("give exactly one of slope or total_steps")
    k = slope if slope is not None else curriculum_slope(total_steps, starting_rate, ratio_replacement_changes)

    def schedule(step: jax.Array | int) -> jax.Array:
        return jnp.minimum(1.0, k * jnp.asarray(step, jnp.float32) + starting_rate)

    return schedule


def sample_replace_mask(rng: jax.Array, p: jax.Array | float, num_modules: int) -> jax.Array:
    """r_i ~ Bernoulli(p), one draw per module for the whole batch."""
    return jax.random.bernoulli(rng, p, (num_modules,))


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {rate}")
