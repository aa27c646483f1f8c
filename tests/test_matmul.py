"""gtr_jax.model.matmul: values and gradients against float64 numpy, and bfloat16 dots kept in bfloat16."""

import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from gtr_jax.model import matmul

SHAPES = [((48, 64), (64, 96)), ((2, 3, 16, 8), (2, 3, 8, 16)), ((5, 7), (7, 3))]  # 7: last axis not split


def _rounded(x, dtype):
    """`x` rounded to `dtype` and back to float64: what the matmul multiplies."""
    return np.asarray(x).astype(dtype).astype(np.float64)


@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_value_and_gradients_match_float64(a_shape, b_shape, compute_dtype):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(a_shape).astype(np.float32), rng.standard_normal(b_shape).astype(np.float32)
    weights = rng.standard_normal(a_shape[:-1] + b_shape[-1:]).astype(np.float32)
    low = ml_dtypes.bfloat16 if compute_dtype == "bfloat16" else np.float32

    def loss(a, b):
        out = matmul.matmul(a, b, jnp.dtype(compute_dtype), jnp.float32)
        return jnp.sum(out * weights), out

    (_, out), (grad_a, grad_b) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(a, b)

    a64, b64 = _rounded(a, low), _rounded(b, low)
    cotangent = _rounded(weights, low)  # the backward rounds the cotangent to the compute dtype
    swap = lambda x: np.swapaxes(x, -1, -2)
    # Float32 accumulation of products of exactly representable operands: float32 tolerance.
    np.testing.assert_allclose(out, a64 @ b64, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad_a, cotangent @ swap(b64), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad_b, swap(a64) @ cotangent, rtol=1e-5, atol=1e-4)
    assert grad_a.dtype == jnp.float32 and grad_b.dtype == jnp.float32  # the operands' dtype


def test_gradient_has_operand_dtypes():
    a = jnp.ones((16, 8), jnp.bfloat16)
    b = jnp.ones((8, 16), jnp.float32)
    grads = jax.grad(lambda a, b: jnp.sum(matmul.matmul(a, b, jnp.bfloat16, jnp.bfloat16).astype(jnp.float32)),
                     argnums=(0, 1))(a, b)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32]


def _dense_loss(x, kernel):
    return jnp.sum(matmul.matmul(x, kernel, jnp.bfloat16, jnp.bfloat16).astype(jnp.float32) ** 2)


def _attention_output_loss(weights, v):
    """Attention's output: a transposed operand, and a result whose heads are transposed back
    and merged, so the cotangent arrives as a transpose too."""
    batch, length, heads, d_kv = v.shape
    out = matmul.matmul(weights, jnp.transpose(v, (0, 2, 1, 3)), jnp.bfloat16, jnp.bfloat16)
    merged = jnp.transpose(out, (0, 2, 1, 3)).reshape(batch, length, heads * d_kv)
    return jnp.sum(merged.astype(jnp.float32) ** 2)


@pytest.mark.parametrize("loss,shapes", [(_dense_loss, [(256, 64), (64, 128)]),
                                         (_attention_output_loss, [(4, 3, 32, 32), (4, 32, 3, 64)])])
def test_bfloat16_gradient_dots_stay_bfloat16_on_cpu(loss, shapes):
    """Every dot of a bfloat16 matmul's forward and backward keeps bfloat16 operands in the
    compiled program (XLA CPU upcasts to float32 the dots its bfloat16 kernels cannot take)."""
    args = [jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32) for shape in shapes]
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile().as_text()
    dots = []  # (output dtype, operand dtypes), resolving names within each computation
    for computation in re.findall(r"\{\n(.*?)\n\}", hlo, re.S):
        dtypes = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", computation))
        for output, operands in re.findall(r"= (\w+)\[[\d,]*\]\{[\d,]*\} dot\(([^)]*)\)", computation):
            dots.append((output, [dtypes[name] for name in re.findall(r"%([\w.\-]+)", operands)]))
    assert dots == [("f32", ["bf16", "bf16"])] * 3, hlo
