"""Dropout masks from the keyed counter hash: the formula, the statistics, sharding invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from jax.sharding import NamedSharding, PartitionSpec

from gtr_jax.train import partitioning
from gtr_jax.model import t5

MASK32 = 2**32 - 1


def python_lowbias32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x7FEB352D) & MASK32
    h ^= h >> 15
    h = (h * 0x846CA68B) & MASK32
    return h ^ (h >> 16)


def test_bits_follow_the_formula_in_python_integers():
    key = jax.random.key(3)
    shape = (3, 4, 5)
    seed0, seed1 = (int(s) for s in jax.random.bits(key, (2,), jnp.uint32))
    bits = np.asarray(t5.counter_hash_bits(key, shape))
    for index, (i, j, k) in enumerate(np.ndindex(*shape)):
        expected = python_lowbias32((python_lowbias32(index ^ seed0) + (i ^ seed1)) & MASK32)
        assert int(bits[i, j, k]) == expected


def test_bits_are_uniform_and_uncorrelated():
    bits = np.asarray(t5.counter_hash_bits(jax.random.key(0), (64, 128, 128)), np.uint64)
    n = bits.size
    for name, byte in [("high byte", bits >> 24), ("low byte", bits & 255)]:
        counts = np.bincount(byte.ravel().astype(np.int64), minlength=256)
        assert scipy.stats.chisquare(counts).pvalue > 1e-4, name
    uniform = bits.astype(np.float64) / 2**32
    assert abs(uniform.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    bound = 5 / np.sqrt(n / 128)
    for a, b in [(uniform[..., 1:], uniform[..., :-1]), (uniform[1:], uniform[:-1]), (uniform[:, 1:], uniform[:, :-1])]:
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < bound
    other = np.asarray(t5.counter_hash_bits(jax.random.key(1), (64, 128, 128)), np.float64) / 2**32
    assert abs(np.corrcoef(uniform.ravel(), other.ravel())[0, 1]) < 5 / np.sqrt(n)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_zeroes_at_the_rate_and_rescales_the_rest(rate):
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (32, 64, 512)), jnp.float32)
    dropout = t5.Dropout(rate)
    y = np.asarray(dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(7)}))
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / x.size)
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
    again = dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(7)})
    other = dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(8)})
    assert np.array_equal(y, np.asarray(again)) and not np.array_equal(y, np.asarray(other))
    assert dropout.apply({}, x, deterministic=True) is x


def test_bits_do_not_depend_on_the_sharding():
    shape = (16, 24, 40)
    key = jax.random.key(5)
    single = np.asarray(jax.jit(t5.counter_hash_bits, static_argnums=1)(key, shape))
    for mesh_shape, spec in [((8, 1), PartitionSpec("data")), ((4, 2), PartitionSpec("data", "model"))]:
        mesh = partitioning.make_mesh(mesh_shape)
        sharded = jax.jit(t5.counter_hash_bits, static_argnums=1, out_shardings=NamedSharding(mesh, spec))(key, shape)
        assert len(sharded.sharding.device_set) == 8
        assert np.array_equal(np.asarray(sharded), single)
