"""Task distillation: the student learns from the labels and from a fixed teacher's logits.

loss = (1 - alpha) * CE(labels, z_student) + alpha * T^2 * KL(softmax(z_teacher / T) ||
softmax(z_student / T)) per example (Hinton et al. 2015; the T^2 keeps the soft term's
gradient scale independent of T). The teacher runs without dropout, so its logits per
training example never change: they travel in the batch (`teacher_logits` [B, C]) instead
of a teacher forward pass in every step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Distillation:
    """alpha 0 is plain cross entropy (the step is then today's step exactly)."""

    alpha: float
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0.0:
            raise ValueError(f"distillation temperature must be > 0, got {self.temperature}")


def soft_kl(student_logits: Array, teacher_logits: Array, temperature: float) -> Array:
    """Per example T^2 * KL(softmax(teacher / T) || softmax(student / T))."""
    teacher_log_probs = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    student_log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    kl = (jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)).sum(-1)
    return temperature**2 * kl


def distillation_losses(student_logits: Array, labels: Array, teacher_logits: Array, distillation: Distillation) -> Array:
    """Per example (1 - alpha) * CE + alpha * T^2 * KL."""
    ce = optax.softmax_cross_entropy_with_integer_labels(student_logits.astype(jnp.float32), labels)
    soft = soft_kl(student_logits, teacher_logits, distillation.temperature)
    return (1.0 - distillation.alpha) * ce + distillation.alpha * soft
