"""The learning-rate schedule, Adafactor's factored state and the fine-tuning step offset."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gtr_jax.train import optim
from gtr_jax.errors import UserError

BASE, WARMUP, TOTAL = 1e-3, 100, 1000


def lr(step, **overrides):
    return float(optim.linear_schedule(step, **{"base_learning_rate": BASE, "total_steps": TOTAL,
                                                 "warmup_steps": WARMUP, **overrides}))


def test_schedule_matches_the_closed_form():
    assert lr(0) == 0.0
    assert lr(50) == pytest.approx(BASE * 50 / WARMUP)
    assert lr(WARMUP) == pytest.approx(BASE)  # end of warmup: the full rate
    midpoint = (WARMUP + TOTAL) // 2
    assert lr(midpoint) == pytest.approx(BASE * (TOTAL - midpoint) / (TOTAL - WARMUP))
    assert lr(TOTAL - 1) == pytest.approx(BASE / (TOTAL - WARMUP))  # the last step
    assert lr(TOTAL) == 0.0 and lr(TOTAL + 10) == 0.0  # exactly zero at and after the end
    assert lr(0, warmup_steps=0) == pytest.approx(BASE)  # the paper: 1e-3 -> 0, no warmup
    assert lr(10_000, total_steps=20_000, warmup_steps=0) == pytest.approx(BASE / 2)


def test_step_offset_shifts_the_schedule():
    for step in (0, 37, WARMUP, 640, TOTAL - 1, TOTAL):
        assert lr(999_900 + step, step_offset=999_900) == lr(step)


def test_adafactor_factors_large_matrices_only():
    params = {"embedding": jnp.ones((256, 130)), "narrow": jnp.ones((64, 300)), "scale": jnp.ones((300,))}
    state = optim.adafactor(total_steps=10).init(params)
    factored = state[0]
    assert {factored.v_row["embedding"].shape, factored.v_col["embedding"].shape} == {(256,), (130,)}
    assert factored.v["embedding"].shape == (1,)  # no full second moment for a factored matrix
    assert factored.v["narrow"].shape == (64, 300)  # 64 < 128: not factored
    assert factored.v["scale"].shape == (300,)


def set_counts(state, count):
    return optax.tree_utils.tree_set(state, count=jnp.asarray(count, jnp.int32))


def test_step_offset_applies_to_adafactor_decay_too():
    params = {"w": jnp.linspace(-1, 1, 256 * 130).reshape(256, 130), "b": jnp.linspace(0.5, 1, 300)}
    grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
    fresh = optim.adafactor(total_steps=TOTAL, warmup_steps=WARMUP)
    offset = optim.adafactor(total_steps=TOTAL, warmup_steps=WARMUP, step_offset=999_900)
    for step in (1, 250):
        expected, _ = fresh.update(grads, set_counts(fresh.init(params), step), params)
        shifted, _ = offset.update(grads, set_counts(offset.init(params), 999_900 + step), params)
        jax.tree.map(np.testing.assert_array_equal, shifted, expected)
    # Without the offset, Adafactor's decay at step 999,901 differs from a fresh start's.
    unshifted, _ = fresh.update(grads, set_counts(fresh.init(params), 999_901), params)
    expected, _ = fresh.update(grads, set_counts(fresh.init(params), 1), params)
    assert not np.allclose(unshifted["w"], expected["w"])


def test_bad_warmup_is_refused():
    with pytest.raises(ValueError, match="warmup_steps"):
        lr(0, warmup_steps=TOTAL)
    with pytest.raises(UserError, match=r"warmup_steps \(50\) < total_steps \(3\)"):
        optim.adafactor(total_steps=3, warmup_steps=50)
