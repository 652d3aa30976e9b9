"""The product of the model's Dense layers, its weight gradient written in a form XLA:CPU runs fast.

Autodiff's weight gradient of y = x W is x^T dY as one dot contracting over the tokens
(dimension 0 of both operands). XLA:CPU leaves that contraction to its Eigen kernels, which
run beside the YNNPACK fusions of the other dots and slow both down on a 2-core machine.
Materialising x^T first (kept by an optimization barrier, or XLA folds the transpose back
into the dot) makes it an ordinary [in, tokens] x [tokens, out] product that YNNPACK takes:
a 12-layer e5-small training step ran 1.09-1.22x faster on an AMD Zen 5 (BENCHMARKS.md).
Where x is wider than dY (the FFN's output projection: x is the GELU output, which XLA
recomputes inside a transposing loop 10x slower than a plain transpose), dY^T is
materialised instead and the [out, in] product transposed: another 1.05-1.08x.
The numbers are the same products summed in another order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
# The weight-gradient dots' name scope: benchmarks.xla_profile tells them from forward dots by it.
WEIGHT_GRADIENT_SCOPE = "weight_gradient"


@jax.custom_vjp
def _matmul(x: Array, kernel: Array) -> Array:
    return jnp.dot(x, kernel)


def _matmul_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return jnp.dot(x, kernel), (x, kernel)


def _matmul_bwd(residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    dx = lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))
    with jax.named_scope(WEIGHT_GRADIENT_SCOPE):
        rows, d_rows = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        if rows.shape[1] > d_rows.shape[1]:  # transpose the narrower operand: (dY^T x)^T
            d_kernel = lax.optimization_barrier(lax.optimization_barrier(d_rows.T) @ rows).T
        else:
            d_kernel = lax.optimization_barrier(rows.T) @ d_rows
    return dx.astype(x.dtype), d_kernel.astype(kernel.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(
    inputs: Array, kernel: Array, dimension_numbers: tuple, precision: lax.PrecisionLike = None
) -> Array:
    """`nn.Dense`'s dot_general (inputs [..., in] x kernel [in, out]) with the backward above."""
    if dimension_numbers != (((inputs.ndim - 1,), (0,)), ((), ())) or precision is not None:
        raise ValueError(f"dense_dot_general computes Dense's product only, not {dimension_numbers}, precision {precision}")
    return _matmul(inputs, kernel)

