"""The training loop: mesh, state, jitted update, checkpoints, metrics, evaluation.

Reads top to bottom in the order a run happens. `train` is handed its parts as
objects (model config, optimizer, mesh, loss, input pipeline, evaluators) and builds
none of them itself: Python callers pass them in, and gin/runs/finetune.gin builds and
binds them t5x-style (`train.model_config = @ModelConfig()`, macros for the settings).

Reliability contract:
  * The data order and dropout are pure functions of (seed, step), and the state is
    checkpointed whole, so a run that is killed and resumed ends bit-equal to one that
    was not.
  * A preemption notice (SIGTERM, or JAX's multi-host preemption sync) checkpoints the
    step reached on every host and returns; the command exits 0 (see preemption).
  * A non-finite loss stops the run before the next checkpoint could store it.
  * An unreadable newest checkpoint is moved to MODEL_DIR/corrupt_checkpoints/ with a
    warning, and the run resumes from the one before. Checkpoints of another model or
    optimizer stop the run with a one-line error and stay where they are.
"""

import dataclasses
import json
import logging
import time
from typing import Any, Callable

import gin
import jax
import jax.numpy as jnp
import optax
import tqdm
from etils import epath
from flax.core import meta
from jax.experimental import multihost_utils

from gtr_jax import losses
from gtr_jax.train import checkpoints, partitioning, train_step
from gtr_jax.train.preemption import Preemption
from gtr_jax.model import dual_encoder
from gtr_jax.errors import UserError

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@gin.configurable
def train(
    *,
    model_dir: str = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    model_config: dual_encoder.ModelConfig = gin.REQUIRED,
    optimizer: optax.GradientTransformation = gin.REQUIRED,
    mesh: jax.sharding.Mesh = gin.REQUIRED,
    loss: losses.LossConfig = gin.REQUIRED,
    input_fn=gin.REQUIRED,
    evaluators=(),
    seed: int = 0,
    logical_axis_rules=None,
    init_checkpoint: str | None = None,
    vocabulary: str | None = None,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    log_every: int = 100,
    eval_every: int = 0,
    grad_cache_chunk_size: int | None = None,
    temperature: float = 0.01,
    learn_temperature: bool = False,
    progress: bool = True,
    dry_run: bool = False,
) -> train_step.TrainState | None:
    """Train a dual encoder for `train_steps` steps (resuming if MODEL_DIR has checkpoints).

    The model is `model_config.build()`, updated by `optimizer` (e.g. `optim.adafactor(...)`)
    under the contrastive loss `loss`, with the batch split over the `data` axis of `mesh`
    (e.g. `partitioning.make_mesh(...)`) and parameters placed by `logical_axis_rules`
    (None: `partitioning.standard_logical_axis_rules(fsdp=False)`).
    `input_fn(global_batch_size=, start_step=, shard_index=, num_shards=, seed=)` yields
    this process's numpy batches from `start_step` on. `evaluators` are factories
    `f(model_config=, mesh=)` returning `evaluate(params, step) -> {name: value}`, run every
    `eval_every` steps. Returns the final state. With `dry_run`, builds everything (mesh,
    shardings, optimizer, loss, the first batch) and traces one step without
    initializing parameters or writing anything, then returns None.
    """
    _check_parts(model_config=model_config, optimizer=optimizer, mesh=mesh, loss=loss)
    is_writer = jax.process_index() == 0

    # ---------------------------------------------------------------- the step, from abstract shapes
    rules = partitioning.standard_logical_axis_rules(fsdp=False) if logical_axis_rules is None else logical_axis_rules
    step_builder = build_step(model_config=model_config, optimizer=optimizer, mesh=mesh, loss=loss,
                              batch_size=batch_size, logical_axis_rules=rules,
                              grad_cache_chunk_size=grad_cache_chunk_size, temperature=temperature,
                              learn_temperature=learn_temperature, seed=seed)
    update, abstract_state = step_builder.update, step_builder.abstract_state
    state_shardings, param_shardings = step_builder.state_shardings, step_builder.param_shardings
    if dry_run:
        return _dry_run(update, abstract_state, input_fn, batch_size, seed, mesh, model_config)

    # ---------------------------------------------------------------- restore or initialize
    epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
    manager = checkpoints.checkpoint_manager(model_dir, max_to_keep=keep_checkpoints, enable_async_checkpointing=True)
    state = _restore_newest_good(manager, model_dir, abstract_state, model_config)
    if state is None:
        state = _initial_state(step_builder.model, optimizer, model_config, init_checkpoint, seed, learn_temperature,
                               temperature, state_shardings, param_shardings)
    start = int(state.step)
    if is_writer:
        _write_run_files(model_dir, model_config, vocabulary)

    # ---------------------------------------------------------------- update step
    batches = input_fn(global_batch_size=batch_size, start_step=start, shard_index=jax.process_index(),
                       num_shards=jax.process_count(), seed=seed)
    first_batch = partitioning.global_batch(next(batches), mesh)
    jitted_step, accumulator_shardings, metric_names = step_builder.jit(first_batch)
    evaluate_fns = [factory(model_config=model_config, mesh=mesh) for factory in evaluators]

    # ---------------------------------------------------------------- loop
    writer = MetricsWriter(model_dir, enabled=is_writer)
    accumulator = jax.device_put(train_step.Accumulator.zeros(metric_names), accumulator_shardings)
    bar = tqdm.tqdm(total=train_steps, initial=start, unit="step", disable=not (progress and is_writer), dynamic_ncols=True)
    interval_start, interval_step, batch = time.perf_counter(), start, first_batch
    preempted = False
    with jax.set_mesh(mesh), Preemption(manager) as preemption:
        for step in range(start, train_steps):
            if batch is None:
                batch = partitioning.global_batch(next(batches), mesh)
            state, accumulator = jitted_step(state, batch, accumulator)
            if is_writer and step == start:
                # Only now has every configurable of the run been called (tracing the step calls the last ones).
                (epath.Path(model_dir) / "operative_config.gin").write_text(gin.operative_config_str())
            batch, done = None, step + 1
            bar.update(1)
            preempted = preemption.reached(done)
            save = done % checkpoint_every == 0 or done == train_steps or preempted
            if done % log_every == 0 or save:
                averages = _drain(accumulator, manager, model_dir)
                accumulator = jax.device_put(train_step.Accumulator.zeros(metric_names), accumulator_shardings)
                elapsed = time.perf_counter() - interval_start
                speed = {"steps_per_sec": (done - interval_step) / elapsed,
                         "examples_per_sec": (done - interval_step) * batch_size / elapsed}
                writer.write(done, {**averages, **speed})
                bar.set_postfix(loss=f"{averages['loss']:.4f}", ex_s=f"{speed['examples_per_sec']:.1f}")
            if save:
                manager.save(done, args=checkpoints.train_state_args(state))
            if preempted:
                break
            if eval_every and (done % eval_every == 0 or done == train_steps):
                writer.write(done, {f"eval/{k}": v for fn in evaluate_fns for k, v in fn(state.params, done).items()})
            if done % log_every == 0 or save:
                # Speed counts training only, not checkpointing or evaluation.
                interval_start, interval_step = time.perf_counter(), done
    bar.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
    if is_writer and preempted:
        print(f"preempted: saved step {int(state.step)} of {train_steps} in {model_dir}; the same command resumes there")
    elif is_writer:
        print(f"trained to step {int(state.step)}; checkpoints, metrics.jsonl and tensorboard/ are in {model_dir}")
    return state


# Each part of a run: the type `train` needs, and the gin binding of gin/runs/finetune.gin that makes one.
_PARTS = {
    "model_config": (dual_encoder.ModelConfig, "@ModelConfig()"),
    "optimizer": (optax.GradientTransformation, "@adafactor()"),
    "mesh": (jax.sharding.Mesh, "@make_mesh()"),
    "loss": (losses.LossConfig, "@LossConfig()"),
}


def _check_parts(**parts):
    """One line if a part is not the object `train` needs (e.g. gin's `@LossConfig` without the call)."""
    for name, value in parts.items():
        kind, binding = _PARTS[name]
        if not isinstance(value, kind):
            raise UserError(f"train.{name} must be a {kind.__name__}, not {value!r:.100} "
                            f"(in gin: train.{name} = {binding})")


@dataclasses.dataclass(frozen=True)
class StepBuilder:
    """The train step of a run, built from abstract shapes only: what `train` runs and `gtr-jax compile` compiles.

    `abstract_state` is the TrainState as ShapeDtypeStructs carrying their shardings;
    `jit(batch)` gives the jitted (state, batch, accumulator) -> (state, accumulator) step
    for a batch of that structure, with its shardings and donation.
    """

    model: Any
    mesh: jax.sharding.Mesh
    update: Callable
    abstract_state: train_step.TrainState
    state_shardings: train_step.TrainState
    param_shardings: Any

    def jit(self, batch: dict):
        """(jitted step, accumulator shardings, metric names) for batches shaped like `batch`."""
        replicated = partitioning.replicated(self.mesh)
        with jax.set_mesh(self.mesh):
            metric_names = sorted(jax.eval_shape(self.update, self.abstract_state, batch)[1])
        accumulator_shardings = jax.tree.map(lambda _: replicated, train_step.Accumulator.zeros(metric_names))
        update = self.update

        def step_and_accumulate(state, batch, accumulator):
            new_state, metrics = update(state, batch)
            return new_state, accumulator.add(state.step, metrics)

        batch_shardings = jax.tree.map(lambda _: partitioning.batch_sharding(self.mesh), batch)
        jitted = jax.jit(
            step_and_accumulate,
            in_shardings=(self.state_shardings, batch_shardings, accumulator_shardings),
            out_shardings=(self.state_shardings, accumulator_shardings),
            donate_argnums=(0, 2),
        )
        return jitted, accumulator_shardings, metric_names

    def lower(self, batch: dict):
        """The step lowered for abstract arguments (state, `batch`, a zero accumulator), no array allocated."""
        jitted, accumulator_shardings, metric_names = self.jit(batch)
        zeros = jax.eval_shape(lambda: train_step.Accumulator.zeros(metric_names))
        accumulator = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                   zeros, accumulator_shardings)
        with jax.set_mesh(self.mesh):
            return jitted.lower(self.abstract_state, batch, accumulator)


def build_step(*, model_config, optimizer, mesh, loss, batch_size, logical_axis_rules, grad_cache_chunk_size,
               temperature, learn_temperature, seed) -> StepBuilder:
    """The model, the state's shardings and abstract shapes, and the update of a run (see `train`)."""
    partitioning.check_divisible(batch_size, mesh)
    model = model_config.build()
    boxed = checkpoints.boxed_param_shapes(model_config)
    param_shardings = partitioning.param_shardings(boxed, mesh, logical_axis_rules)
    params_shape = meta.unbox(boxed)
    temperature_shape = jax.eval_shape(lambda: train_step.initial_temperature(learn_temperature, temperature))
    opt_shape = jax.eval_shape(optimizer.init, (params_shape, temperature_shape))
    replicated = partitioning.replicated(mesh)
    # Replicated optimizer state: cheap for Adafactor's O(rows + cols) statistics per matrix.
    state_shardings = train_step.TrainState(
        step=replicated,
        params=param_shardings,
        temperature=jax.tree.map(lambda _: replicated, temperature_shape),
        opt_state=jax.tree.map(lambda _: replicated, opt_shape),
    )
    state_shape = train_step.TrainState(jax.ShapeDtypeStruct((), jnp.int32), params_shape, temperature_shape, opt_shape)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_shape, state_shardings
    )
    update = train_step.make_update(model, optimizer, mesh, loss=loss, temperature=temperature, dropout_seed=seed,
                                    grad_cache_chunk_size=grad_cache_chunk_size, logical_axis_rules=logical_axis_rules)
    return StepBuilder(model, mesh, update, abstract_state, state_shardings, param_shardings)


def _dry_run(update, abstract_state, input_fn, batch_size, seed, mesh, model_config):
    """Trace one step on the first real batch; print what a run would use."""
    batches = input_fn(global_batch_size=batch_size, start_step=0, shard_index=jax.process_index(),
                       num_shards=jax.process_count(), seed=seed)
    batch = partitioning.global_batch(next(batches), mesh)
    metrics = jax.eval_shape(update, abstract_state, batch)[1]
    num_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    print(f"dry run: {model_config.tower} model, {num_params:,} parameters, mesh {dict(mesh.shape)}")
    print("batch: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(batch.items())))
    print("metrics: " + ", ".join(sorted(metrics)))
    return None


def _initial_state(model, tx, model_config, init_checkpoint, seed, learn_temperature, temperature,
                   state_shardings, param_shardings):
    """Step 0: params from INIT_CHECKPOINT (a model dir) or a seeded random init."""
    # One jitted program builds the whole state: eager per-leaf ops would each compile.
    def build(params):
        temperature_params = train_step.initial_temperature(learn_temperature, temperature)
        return train_step.TrainState(jnp.zeros((), jnp.int32), params, temperature_params,
                                     tx.init((params, temperature_params)))

    if init_checkpoint:
        params, _ = checkpoints.restore_params(init_checkpoint, shardings=param_shardings, model_config=model_config)
        log.info("initialized from %s", init_checkpoint)
        return jax.jit(build, out_shardings=state_shardings, donate_argnums=0)(params)
    tokens = jnp.ones((1, 2), jnp.int32)
    init = lambda key: build(meta.unbox(model.init(key, tokens, tokens)["params"]))
    return jax.jit(init, out_shardings=state_shardings)(jax.random.key(seed))


def _restore_newest_good(manager, model_dir, abstract_state, model_config):
    """The newest checkpoint that restores; unreadable newer ones are moved aside with a warning.

    Checkpoints of another model or optimizer are a UserError: they are not damaged, and
    moving them aside would silently restart the run from scratch.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if steps:
        checkpoints.check_resumable(model_dir, model_config)
    for step in steps:
        try:
            return checkpoints.restore_train_state(manager, step, abstract_state)
        except checkpoints.UnreadableCheckpoint as error:
            quarantine = epath.Path(model_dir) / "corrupt_checkpoints"
            name = f"{checkpoints.STEP_PREFIX}_{step}"
            if jax.process_index() == 0:
                quarantine.mkdir(parents=True, exist_ok=True)
                (epath.Path(model_dir) / checkpoints.CHECKPOINTS / name).rename(quarantine / name)
            multihost_utils.sync_global_devices(f"quarantined {name}")
            manager.reload()
            log.warning("checkpoint %d is unreadable (%s); moved it to %s and resuming from an older one",
                        step, error, quarantine)
            print(f"warning: checkpoint {step} is unreadable ({error}); moved to {quarantine}", flush=True)
    return None


def _drain(accumulator, manager, model_dir) -> dict:
    """Averages of the accumulated metrics; raises if any loss since the last drain was not finite."""
    host = jax.device_get(accumulator)
    if host.first_nonfinite_step >= 0:
        manager.wait_until_finished()
        good = manager.latest_step()
        last = f"the last good checkpoint is step {good} in {model_dir}" if good is not None else "no checkpoint was written"
        raise TrainingDiverged(f"the loss became NaN or infinite at step {int(host.first_nonfinite_step) + 1}; "
                               f"stopped ({last})")
    return {k: float(v) / int(host.count) for k, v in host.sums.items()}


def _write_run_files(model_dir, model_config, vocabulary):
    """model_config.json, the vocabulary and the full gin config (config.gin), for encode/export/eval.

    The operative config (operative_config.gin: only what the run used) is written after
    the first step, once it is known.
    """
    directory = epath.Path(model_dir)
    checkpoints.save_model_config(model_dir, model_config)
    if vocabulary:
        (directory / "spiece.model").write_bytes(epath.Path(vocabulary).read_bytes())
    (directory / "config.gin").write_text(gin.config_str())


class MetricsWriter:
    """Scalars to TensorBoard (clu) and to MODEL_DIR/metrics.jsonl, from process 0 only.

    The JSONL file is rewritten whole at each write: cloud storage cannot append, and a
    run logs a few hundred lines.
    """

    def __init__(self, model_dir: str, enabled: bool):
        self.enabled = enabled
        if enabled:
            from clu import metric_writers

            self._tensorboard = metric_writers.create_default_writer(str(epath.Path(model_dir) / "tensorboard"),
                                                                     asynchronous=True)
            self._jsonl = epath.Path(model_dir) / "metrics.jsonl"
            self._lines = self._jsonl.read_text().splitlines(keepends=True) if self._jsonl.exists() else []

    def write(self, step: int, scalars: dict):
        """Record one set of scalars for a step."""
        if not self.enabled or not scalars:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        self._tensorboard.write_scalars(step, scalars)
        self._lines.append(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.write_text("".join(self._lines))

    def close(self):
        """Flush TensorBoard."""
        if self.enabled:
            self._tensorboard.close()

