"""Model directories: model config, vocabulary and orbax checkpoints, written atomically.

A model directory (MODEL_DIR of a training run, or the output of `gtr-jax import`):
  model_config.json        the DualEncoder's shape (`dual_encoder.ModelConfig`)
  spiece.model             the SentencePiece vocabulary the model was trained with
  checkpoints/checkpoint_N orbax checkpoints; item `params` holds the DualEncoder params
One format for everything: the trainer starts from, resumes from and evaluates these,
and `encode`/`export` read them.
"""

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager

import jax
import orbax.checkpoint as ocp
from flax.core import meta

from gtr_jax import dual_encoder
from gtr_jax.errors import UserError

MODEL_CONFIG = "model_config.json"
CHECKPOINTS = "checkpoints"
STEP_PREFIX = "checkpoint"


def checkpoint_manager(model_dir: str, read_only: bool = False, **options) -> ocp.CheckpointManager:
    """The orbax manager of `model_dir/checkpoints`; `options` go to CheckpointManagerOptions.

    Readers use `read_only`, so that they never clean up a checkpoint a running trainer
    is still writing.
    """
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    if read_only:
        # Orbax warns that a read-only manager will not save, which is the point.
        absl_logger.setLevel(logging.ERROR)
    try:
        options = ocp.CheckpointManagerOptions(step_prefix=STEP_PREFIX, read_only=read_only, create=not read_only, **options)
        return ocp.CheckpointManager(os.path.join(os.path.abspath(model_dir), CHECKPOINTS), options=options)
    finally:
        absl_logger.setLevel(level)


def save_model_config(model_dir: str, model_config: dual_encoder.ModelConfig):
    """Write model_config.json."""
    with open(os.path.join(model_dir, MODEL_CONFIG), "w", encoding="utf-8") as f:
        f.write(model_config.to_json() + "\n")


def load_model_config(model_dir: str) -> dual_encoder.ModelConfig:
    """Read model_config.json, with a one-line error if the directory is not a model dir."""
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: no such model directory")
    path = os.path.join(model_dir, MODEL_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            return dual_encoder.ModelConfig.from_json(f.read())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; is {model_dir} a gtr-jax model directory?") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a valid model config ({e})") from None


def abstract_params(model_config: dual_encoder.ModelConfig, sharding=None):
    """ShapeDtypeStructs of the model's params, each with `sharding` (default: the first device)."""
    model = model_config.build()
    tokens = jax.ShapeDtypeStruct((1, 2), "int32")
    shapes = jax.eval_shape(lambda t: model.init(jax.random.key(0), t, t), tokens)["params"]
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), meta.unbox(shapes))


def restore_params(model_dir: str, step: int | None = None, sharding=None):
    """(params, step) of the given or newest checkpoint of a model directory."""
    model_config = load_model_config(model_dir)
    manager = checkpoint_manager(model_dir, read_only=True)
    steps = manager.all_steps()
    if not steps:
        raise UserError(f"{model_dir}: no checkpoints under {CHECKPOINTS}/")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise UserError(f"{model_dir}: no checkpoint for step {step}; available: {sorted(steps)}")
    target = ocp.args.StandardRestore(abstract_params(model_config, sharding))
    restored = manager.restore(step, args=ocp.args.Composite(params=target))
    return restored["params"], step


@contextmanager
def atomic_directory(output_dir: str, overwrite: bool = False):
    """Yield a temporary sibling directory that becomes `output_dir` only if the block succeeds.

    A non-empty `output_dir` is an error unless `overwrite`; then it is replaced whole,
    after the new one is complete, so a failure leaves the old directory as it was.
    """
    output_dir = os.path.abspath(output_dir)
    exists = os.path.isdir(output_dir) and bool(os.listdir(output_dir))
    if exists and not overwrite:
        raise UserError(f"{output_dir}: exists and is not empty; pass --overwrite to replace it")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"{output_dir}: exists and is not a directory")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        yield staging
        if os.path.exists(output_dir):
            retired = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-", dir=parent)
            os.rename(output_dir, os.path.join(retired, "old"))
            os.rename(staging, output_dir)
            shutil.rmtree(retired)
        else:
            os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_model_dir(model_dir: str, model_config: dual_encoder.ModelConfig, params, step: int = 0):
    """Write model_config.json and a `params` checkpoint at `step` into an existing directory."""
    save_model_config(model_dir, model_config)
    manager = checkpoint_manager(model_dir, enable_async_checkpointing=False)
    params = jax.tree.map(jax.numpy.asarray, params)
    manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()
    manager.close()
