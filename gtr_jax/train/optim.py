"""Adafactor with linear warmup and linear decay to exactly zero (the GTR/SamToNe recipe).

The schedule is defined by `total_steps`, not by a decay factor: t5x's factor-defined
linear decay is easy to get wrong when fine-tuning starts at a large step. When the
optimizer's step count does not start at 0 (a restored pre-training state at step
999,900, say), `step_offset` shifts both the schedule and Adafactor's own
step-dependent second-moment decay, so fine-tuning behaves as if it started fresh.
"""

import gin
import jax.numpy as jnp
import optax

from gtr_jax.errors import UserError


@gin.configurable
def linear_schedule(step, *, base_learning_rate: float, total_steps: int, warmup_steps: int = 0, step_offset: int = 0):
    """Learning rate at optimizer step `step` (0-based).

    Rises linearly from 0 to `base_learning_rate` over `warmup_steps` (step w gives the
    full rate), then falls linearly to exactly 0 at step `total_steps`, relative to
    `step_offset`. With no warmup, step 0 gets the full rate.
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) < total_steps ({total_steps})")
    step = jnp.asarray(step, jnp.float32) - step_offset
    warmup = step / warmup_steps if warmup_steps else 1.0
    decay = (total_steps - step) / (total_steps - warmup_steps)
    return base_learning_rate * jnp.clip(jnp.minimum(warmup, decay), 0.0, 1.0)


@gin.configurable
def adafactor(
    *,
    total_steps: int = gin.REQUIRED,
    base_learning_rate: float = 1e-3,
    warmup_steps: int = 0,
    step_offset: int = 0,
    decay_rate: float = 0.8,
    clipping_threshold: float = 1.0,
    multiply_by_parameter_scale: bool = True,
    min_dim_size_to_factor: int = 128,
) -> optax.GradientTransformation:
    """optax Adafactor (factored second moments, no momentum) under `linear_schedule`.

    The defaults are t5x's (and the paper's): β2_t = 1 - t^-0.8, updates clipped at RMS
    1, steps proportional to the parameter's RMS (at least 1e-3), second moments factored
    for matrices whose two largest dimensions are both ≥ `min_dim_size_to_factor`.
    `torch.optim.Adafactor` (sentence-transformers users' choice) is the same algorithm
    but factors every matrix; `min_dim_size_to_factor=1` makes the two step alike
    (tests/test_optimizer_parity.py). Epsilons differ too: optax adds 1e-30 to squared
    gradients, torch floors the variance estimate at float32 eps².
    """
    if not 0 <= warmup_steps < total_steps:
        raise UserError(f"adafactor: need 0 <= warmup_steps ({warmup_steps}) < total_steps ({total_steps}); "
                        "set WARMUP_STEPS and TRAIN_STEPS accordingly")
    schedule = lambda step: linear_schedule(
        step,
        base_learning_rate=base_learning_rate,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        step_offset=step_offset,
    )
    return optax.adafactor(
        learning_rate=schedule,
        decay_rate=decay_rate,
        decay_offset=step_offset,
        clipping_threshold=clipping_threshold,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        min_dim_size_to_factor=min_dim_size_to_factor,
        factored=True,
    )
