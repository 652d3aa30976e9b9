"""Pure train and eval steps: `(state, batch, rng) -> (state, metrics)`.

One factory serves plain fine-tuning and Theseus Compression: with a `Compression`, the
step computes p from its step number, draws the replacement mask from the step's key and
passes it to the model; everything stays inside one jitted function.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from theseus_jax.compression.schedules import Schedule, sample_replace_mask
from theseus_jax.training.distillation import Distillation, distillation_losses
from theseus_jax.training.optimizer import apply_trainable_updates

Array = jax.Array
Batch = dict[str, Array]
Metrics = dict[str, Array]
Objective = Literal["mlm", "classification"]
IGNORE_INDEX = -100


@flax.struct.dataclass
class TrainState:
    step: Array
    params: Any
    opt_state: optax.OptState


def create_train_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


@dataclasses.dataclass(frozen=True)
class Compression:
    """What a train step needs to run Theseus Compression."""

    schedule: Schedule
    num_modules: int


def mlm_weights(batch: Batch) -> Array:
    """1 at the positions the MLM loss counts (labels != -100), else 0."""
    return (batch["labels"] != IGNORE_INDEX).astype(jnp.float32)


def classification_weights(batch: Batch) -> Array:
    """1 for the real examples of a batch (`example_mask` drops padding rows), else 0."""
    return batch.get("example_mask", jnp.ones(batch["labels"].shape[0])).astype(jnp.float32)


def mlm_loss(logits: Array, batch: Batch) -> tuple[Array, Metrics]:
    """Mean cross entropy over masked positions (labels != -100) only."""
    labels = batch["labels"]
    weights = mlm_weights(batch)
    safe_labels = jnp.where(labels == IGNORE_INDEX, 0, labels)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe_labels)
    count = weights.sum()
    correct = ((logits.argmax(-1) == labels) * weights).sum()
    loss_sum = (losses * weights).sum()
    return loss_sum / jnp.maximum(count, 1.0), {"loss_sum": loss_sum, "count": count, "correct": correct}


def classification_loss(logits: Array, batch: Batch, distillation: Distillation | None = None) -> tuple[Array, Metrics]:
    """Mean cross entropy over real examples (`example_mask` drops padding rows); with a
    `distillation` of alpha > 0, mixed with the soft loss against `batch["teacher_logits"]`."""
    weights = classification_weights(batch)
    if distillation is not None and distillation.alpha > 0:
        losses = distillation_losses(logits, batch["labels"], batch["teacher_logits"], distillation)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["labels"])
    count = weights.sum()
    correct = ((logits.argmax(-1) == batch["labels"]) * weights).sum()
    loss_sum = (losses * weights).sum()
    return loss_sum / jnp.maximum(count, 1.0), {"loss_sum": loss_sum, "count": count, "correct": correct}


LOSSES: dict[str, Callable[[Array, Batch], tuple[Array, Metrics]]] = {
    "mlm": mlm_loss,
    "classification": classification_loss,
}
WEIGHTS: dict[str, Callable[[Batch], Array]] = {"mlm": mlm_weights, "classification": classification_weights}


def _forward(model: nn.Module, params: Any, batch: Batch, **kwargs: Any) -> Array:
    if "masked_positions" in batch:  # MLM logits only where labels are (see BertForMaskedLM)
        kwargs["masked_positions"] = batch["masked_positions"]
    return model.apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], **kwargs
    )


def micro_batches(x: Array, steps: int) -> Array:
    """[B, ...] -> [steps, B / steps, ...], micro-batch i holding rows i, i + steps, ....

    Strided rather than contiguous: a device holding a block of B / D rows (data
    parallelism) holds B / (D * steps) rows of every micro-batch, so when its rows divide
    by `steps` no micro-batch moves between devices.
    """
    if x.shape[0] % steps:
        raise ValueError(f"{x.shape[0]} batch rows do not split into {steps} micro-batches")
    return jnp.swapaxes(x.reshape((-1, steps) + x.shape[1:]), 0, 1)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    trainable: Any,
    objective: Objective,
    compression: Compression | None = None,
    learning_rate: optax.Schedule | None = None,
    accumulation_steps: int = 1,
    distillation: Distillation | None = None,
) -> Callable[[TrainState, Batch, Array], tuple[TrainState, Metrics]]:
    """Builds `train_step(state, batch, rng)`; jit it with `donate_argnums=(0,)`.

    `rng` is the run's key: the step folds in its own number, so a resumed run draws the
    same masks and dropout as an uninterrupted one. `trainable` is the bool mask tree the
    optimizer was built with: only that partition is differentiated, so no frozen
    weight gradient is ever computed. With `accumulation_steps` k > 1 the batch is split
    into k micro-batches (scanned, one replacement draw for all of them) whose summed
    gradients equal the whole batch's. A `distillation` (classification only) needs
    `teacher_logits` in every batch.
    """
    if distillation is not None and objective != "classification":
        raise ValueError(f"distillation applies to classification, not {objective!r}")
    loss_of = functools.partial(classification_loss, distillation=distillation) if distillation else LOSSES[objective]
    is_trainable = traverse_util.flatten_dict(trainable, sep="/")

    def split(params: Any) -> tuple[dict[str, Array], dict[str, Array]]:
        flat = traverse_util.flatten_dict(params, sep="/")
        return (
            {k: v for k, v in flat.items() if is_trainable[k]},
            {k: v for k, v in flat.items() if not is_trainable[k]},
        )

    def share_of_mean_loss(train_part, frozen_part, batch, count, dropout_rng, kwargs) -> tuple[Array, Metrics]:
        """This batch's summed loss over the whole batch's `count`: its gradient is already the
        mean loss's (no pass dividing the gradients, which would hold a second copy of the
        largest one, e.g. a 250k-token embedding table's)."""
        params = traverse_util.unflatten_dict({**train_part, **frozen_part}, sep="/")
        logits = _forward(model, params, batch, deterministic=False, rngs={"dropout": dropout_rng}, **kwargs)
        _, aux = loss_of(logits, batch)
        return aux["loss_sum"] / count, aux

    gradient = jax.grad(share_of_mean_loss, has_aux=True)

    def train_step(state: TrainState, batch: Batch, rng: Array) -> tuple[TrainState, Metrics]:
        replace_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
        metrics: Metrics = {}
        kwargs: dict[str, Any] = {}
        if compression is not None:
            p = compression.schedule(state.step)
            replace_mask = sample_replace_mask(replace_rng, p, compression.num_modules)
            kwargs["replace_mask"] = replace_mask
            metrics["replace_rate"] = p
            metrics["modules_replaced"] = replace_mask.sum()

        train_part, frozen_part = split(state.params)
        count = jnp.maximum(WEIGHTS[objective](batch).sum(), 1.0)
        if accumulation_steps == 1:
            grads, aux = gradient(train_part, frozen_part, batch, count, dropout_rng, kwargs)
        else:
            micro = jax.tree.map(functools.partial(micro_batches, steps=accumulation_steps), batch)

            def accumulate(total, xs):
                micro_batch, i = xs
                out = gradient(train_part, frozen_part, micro_batch, count, jax.random.fold_in(dropout_rng, i), kwargs)
                return jax.tree.map(jnp.add, total, out), None

            zeros = (jax.tree.map(jnp.zeros_like, train_part), {k: jnp.zeros(()) for k in ("loss_sum", "count", "correct")})
            (grads, aux), _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(accumulation_steps)))
        # The optimizer sees the whole tree; frozen leaves get zeros it ignores (set_to_zero).
        full_grads = traverse_util.unflatten_dict({**grads, **jax.tree.map(jnp.zeros_like, frozen_part)}, sep="/")
        updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
        params = apply_trainable_updates(state.params, updates, trainable)
        metrics.update(loss=aux["loss_sum"] / count, grad_norm=optax.tree.norm(grads), **aux)
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate(state.step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_logits_step(model: nn.Module) -> Callable[[Any, Batch], Array]:
    """Builds `logits_step(params, batch)`: the outputs without dropout (a teacher's logits)."""
    return lambda params, batch: _forward(model, params, batch, deterministic=True)


def make_eval_step(model: nn.Module, objective: Objective) -> Callable[[Any, Batch], Metrics]:
    """Builds `eval_step(params, batch)` returning sums to aggregate over batches and, for
    classification, the class probabilities (for ROC AUC and F1 on the host).

    A Theseus model evaluates its successor alone (no replacement mask).
    """
    loss_of = LOSSES[objective]

    def eval_step(params: Any, batch: Batch) -> Metrics:
        logits = _forward(model, params, batch, deterministic=True)
        _, metrics = loss_of(logits, batch)
        if objective == "classification":
            metrics["probabilities"] = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        return metrics

    return eval_step
