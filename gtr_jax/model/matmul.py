"""Matmuls in a compute dtype with float32 accumulation, forward and backward on fast kernels.

XLA CPU hands a dot to YNNPACK (which uses AMX or AVX-512 BF16 where the CPU has them)
only in canonical form: operands row-major, contracting the lhs's last axis and the rhs's
axis before its last, leading batch axes, and for bfloat16 a float32 result. Any other
bfloat16 dot is upcast to float32 and runs on the generic kernels. Autodiff's backward
dots contract the token axis of two token-major arrays, so they are never canonical, and
XLA folds a plain transpose into the dot's dimension numbers instead of materializing it.
`matmul`'s custom gradient feeds every dot operands laid out row-major in memory, which
makes a bfloat16 train step on a CPU with AMX much faster than autodiff's dots do
(figures in docs/performance.md).

Other backends (TPU, GPU) take transposed operands natively: there `in_row_major` returns
its input unchanged and XLA is free to fold transposes into the dots.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax


def in_row_major(x: jax.Array) -> jax.Array:
    """`x` (typically a transpose) materialized with a row-major layout on XLA CPU.

    Splitting the last axis of a transposed array cannot be a bitcast, so XLA copies it
    into row-major order; the optimization barrier keeps the simplifier from cancelling
    the split against the merge that follows. Elsewhere, or for a last axis too short to
    split, `x` unchanged.
    """
    if jax.default_backend() != "cpu" or x.ndim < 2:
        return x
    split = math.gcd(x.shape[-1], 64)
    if split == 1:
        return x
    parts = lax.optimization_barrier(x.reshape(x.shape[:-1] + (x.shape[-1] // split, split)))
    return parts.reshape(x.shape)


def _dot(a: jax.Array, b: jax.Array, compute_dtype) -> jax.Array:
    """[..., m, k] @ [..., k, n] -> [..., m, n] in float32, operands cast to `compute_dtype`."""
    batch = tuple(range(a.ndim - 2))
    dimensions = (((a.ndim - 1,), (b.ndim - 2,)), (batch, batch))
    return lax.dot_general(a.astype(compute_dtype), b.astype(compute_dtype), dimensions,
                           preferred_element_type=jnp.float32)


def matmul(a: jax.Array, b: jax.Array, compute_dtype, out_dtype) -> jax.Array:
    """`a @ b` over the last two axes (equal leading batch axes), computed in `compute_dtype`
    with float32 accumulation, returned in `out_dtype`.

    In float32 this is a plain dot that autodiff differentiates; XLA CPU's float32 kernels
    take transposed operands, and materializing them measured slower. In a lower precision
    the operands are laid out row-major and the gradient is `_low_precision_matmul`'s.
    """
    if jnp.dtype(compute_dtype) == jnp.float32:
        return _dot(a, b, compute_dtype).astype(out_dtype)
    dtypes = (jnp.dtype(compute_dtype), jnp.dtype(out_dtype), a.dtype, b.dtype)
    return _low_precision_matmul(in_row_major(a), in_row_major(b), *dtypes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _low_precision_matmul(a, b, compute_dtype, out_dtype, a_dtype, b_dtype):
    """`matmul` whose gradients are the same kind of matmul (cotangent rounded to
    `compute_dtype`, operands transposed in memory, float32 accumulation), each rounded
    once to its operand's own dtype (`a_dtype`, `b_dtype`): a float32 weight gets its
    gradient without the bfloat16 round trip that autodiff through `kernel.astype(bfloat16)`
    would give it."""
    return _dot(a, b, compute_dtype).astype(out_dtype)


def _low_precision_forward(a, b, compute_dtype, out_dtype, a_dtype, b_dtype):
    # Residuals in the compute dtype: half the memory of float32 ones, and no second cast.
    a_low, b_low = a.astype(compute_dtype), b.astype(compute_dtype)
    return _dot(a_low, b_low, compute_dtype).astype(out_dtype), (a_low, b_low)


def _low_precision_backward(compute_dtype, out_dtype, a_dtype, b_dtype, operands, cotangent):
    a_low, b_low = operands
    # The cotangent may arrive as a transpose too (that of the heads-first transposes in
    # attention), which XLA would fold into both dots.
    cotangent = in_row_major(cotangent.astype(compute_dtype))
    transposed = lambda x: in_row_major(jnp.swapaxes(x, -1, -2))
    a_cotangent = _dot(cotangent, transposed(b_low), compute_dtype)
    b_cotangent = _dot(transposed(a_low), cotangent, compute_dtype)
    return a_cotangent.astype(a_dtype), b_cotangent.astype(b_dtype)


_low_precision_matmul.defvjp(_low_precision_forward, _low_precision_backward)
