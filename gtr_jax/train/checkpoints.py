"""Model directories: model config, vocabulary and orbax checkpoints, written atomically.

A model directory (MODEL_DIR of a training run, or the output of `gtr-jax import`):
  model_config.json        the DualEncoder's shape (`dual_encoder.ModelConfig`)
  spiece.model             the SentencePiece vocabulary the model was trained with
  checkpoints/checkpoint_N orbax checkpoints; item `params` holds the DualEncoder params
One format for everything: the trainer starts from, resumes from and evaluates these,
and `encode`/`export` read them.
"""

import dataclasses
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax.core import meta

from gtr_jax.model import dual_encoder, t5
from gtr_jax.train import abandoned_reads
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
        # Cloud paths (gs://...) are absolute already; os.path would mangle them.
        root = model_dir if "://" in model_dir else os.path.abspath(model_dir)
        return ocp.CheckpointManager(f"{root.rstrip('/')}/{CHECKPOINTS}", options=options)
    finally:
        absl_logger.setLevel(level)


def save_model_config(model_dir: str, model_config: dual_encoder.ModelConfig):
    """Write model_config.json (local or cloud paths)."""
    (epath.Path(model_dir) / MODEL_CONFIG).write_text(model_config.to_json() + "\n")


def load_model_config(model_dir: str) -> dual_encoder.ModelConfig:
    """Read model_config.json, with a one-line error if the directory is not a model dir."""
    if not epath.Path(model_dir).is_dir():
        raise UserError(f"{model_dir}: no such model directory")
    path = epath.Path(model_dir) / MODEL_CONFIG
    try:
        return dual_encoder.ModelConfig.from_json(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; is {model_dir} a gtr-jax model directory?") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a valid model config ({e})") from None


def boxed_param_shapes(model_config: dual_encoder.ModelConfig):
    """The model's params as shapes, still boxed with their logical axis names."""
    model = model_config.build()
    tokens = jax.ShapeDtypeStruct((1, 2), "int32")
    return jax.eval_shape(lambda t: model.init(jax.random.key(0), t, t), tokens)["params"]


def with_shardings(shapes, shardings):
    """ShapeDtypeStructs carrying `shardings` (one sharding, or a tree of them)."""
    if not isinstance(shardings, (dict, list, tuple)):
        shardings = jax.tree.map(lambda _: shardings, shapes)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def abstract_params(model_config: dual_encoder.ModelConfig, shardings=None):
    """ShapeDtypeStructs of the model's params with `shardings` (default: the first device)."""
    shardings = shardings or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return with_shardings(meta.unbox(boxed_param_shapes(model_config)), shardings)


def restore_params(model_dir: str, step: int | None = None, shardings=None, model_config=None):
    """(params, step) of the given or newest checkpoint of a model directory.

    With `model_config`, the checkpoint must hold params of that shape; it may differ from
    the saved config only in the layer layout (`scan_layers`), which is converted.
    """
    saved_config = load_model_config(model_dir)
    target_config = model_config or saved_config
    _check_compatible(model_dir, saved_config, target_config)
    manager = checkpoint_manager(model_dir, read_only=True)
    steps = manager.all_steps()
    if step is not None and step not in steps and _unfinished(model_dir, step):
        raise UserError(f"{model_dir}: checkpoint {step} is half-written (its save never finished); "
                        f"finished ones: {sorted(steps)}")
    if not steps:
        raise UserError(f"{model_dir}: no checkpoints under {CHECKPOINTS}/")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise UserError(f"{model_dir}: no checkpoint for step {step}; available: {sorted(steps)}")
    if saved_config.encoder.scan_layers == target_config.encoder.scan_layers:
        return _restore_params_item(manager, model_dir, step, abstract_params(target_config, shardings)), step
    restored = {"params": _restore_params_item(manager, model_dir, step, abstract_params(saved_config))}
    convert = t5.stack_layers if target_config.encoder.scan_layers else t5.unstack_layers
    params = {
        name: convert(tree, target_config.encoder.num_layers) if name.endswith("encoder") else tree
        for name, tree in restored["params"].items()
    }
    target = abstract_params(target_config, shardings)
    return jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), params, target), step


def _unfinished(model_dir: str, step: int) -> bool:
    """Whether orbax left the temporary directory of an interrupted save of `step`."""
    directory = os.path.join(model_dir, CHECKPOINTS)
    prefix = f"{STEP_PREFIX}_{step}.orbax-checkpoint-tmp"
    return any(name.startswith(prefix) for name in os.listdir(directory)) if os.path.isdir(directory) else False


def _restore_params_item(manager: ocp.CheckpointManager, model_dir: str, step: int, target):
    """The `params` item of a checkpoint; a damaged one is a one-line UserError, not a tensorstore trace."""
    try:
        return manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
    except Exception as error:  # orbax/tensorstore raise many types for damaged files
        reason = _failed_read_reason(error, _step_dir(manager, step))
        raise UserError(f"{model_dir}: checkpoint {step} is unreadable ({reason})") from None


def _step_dir(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    """The directory of checkpoint `step`, as orbax names it (local or cloud)."""
    return epath.Path(manager.directory) / f"{STEP_PREFIX}_{step}"


def _failed_read_reason(error: Exception, checkpoint_dir) -> str:
    """The first line of the innermost cause of a failed orbax read, which names the damaged file.

    Orbax's wrappers add a TensorStore dump of dozens of lines, and so do the reads the
    failure abandoned, later; those are silenced.
    """
    abandoned_reads.silence(str(checkpoint_dir))
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__


def _check_compatible(model_dir: str, saved: dual_encoder.ModelConfig, wanted: dual_encoder.ModelConfig,
                      convertible_layout: bool = True):
    """One clear error when a checkpoint's params cannot serve as the wanted model's params.

    The layer layout (`scan_layers`) may differ when `convertible_layout`: restore_params
    converts it.
    """
    same_layout = dataclasses.replace(saved.encoder, remat=wanted.encoder.remat, dtype=wanted.encoder.dtype,
                                      dropout_rate=wanted.encoder.dropout_rate)
    if convertible_layout:
        same_layout = dataclasses.replace(same_layout, scan_layers=wanted.encoder.scan_layers)
    differences = [
        f"{name} {getattr(saved, name)} vs {getattr(wanted, name)}" for name in ("tower", "embed_dim")
        if getattr(saved, name) != getattr(wanted, name)
    ]
    differences += [
        f"{field} {a} vs {b}" for field, a, b in
        ((f.name, getattr(same_layout, f.name), getattr(wanted.encoder, f.name)) for f in dataclasses.fields(same_layout))
        if a != b
    ]
    if differences:
        raise UserError(f"{model_dir}: checkpoint does not fit the configured model ({'; '.join(differences)})")


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


def train_state_args(state) -> ocp.args.Composite:
    """orbax save args for a TrainState: items `params`, `opt_state` and, if learnt, `temperature`."""
    items = {"params": ocp.args.StandardSave(state.params), "opt_state": ocp.args.StandardSave(state.opt_state)}
    if state.temperature:
        items["temperature"] = ocp.args.StandardSave(state.temperature)
    return ocp.args.Composite(**items)


class UnreadableCheckpoint(Exception):
    """A checkpoint whose files are damaged (truncated, missing or corrupt); the message says which."""


def check_resumable(model_dir: str, model_config: dual_encoder.ModelConfig):
    """A UserError if MODEL_DIR's checkpoints were trained with a model of another shape or layout."""
    if (epath.Path(model_dir) / MODEL_CONFIG).exists():
        try:
            _check_compatible(model_dir, load_model_config(model_dir), model_config, convertible_layout=False)
        except UserError as error:
            raise UserError(f"{error}; resume with the model it was trained with, or train into a new MODEL_DIR") from None


def restore_train_state(manager: ocp.CheckpointManager, step: int, abstract_state):
    """The TrainState saved at `step`, placed with the shardings of `abstract_state`.

    Raises UserError if the checkpoint holds another state than `abstract_state` (another
    optimizer, or a learnt temperature where none is wanted), and UnreadableCheckpoint if
    its files are damaged.
    """
    step_dir = _step_dir(manager, step)
    items = {
        "params": ocp.args.StandardRestore(abstract_state.params),
        "opt_state": ocp.args.StandardRestore(abstract_state.opt_state),
    }
    if abstract_state.temperature:
        if not (step_dir / "temperature").exists():
            raise UserError(f"{step_dir}: has no learnt temperature; resume without train.learn_temperature, "
                            "or train into a new MODEL_DIR")
        items["temperature"] = ocp.args.StandardRestore(abstract_state.temperature)
    for name, item in items.items():
        _check_same_arrays(step_dir, name, item.item)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # orbax/tensorstore raise many types for damaged files
        raise UnreadableCheckpoint(_failed_read_reason(error, step_dir)) from None
    step_array = jax.device_put(np.asarray(step, np.int32), abstract_state.step.sharding)
    return abstract_state.replace(
        step=step_array,
        params=restored["params"],
        opt_state=restored["opt_state"],
        temperature=restored["temperature"] if abstract_state.temperature else {},
    )


def _check_same_arrays(step_dir: epath.Path, name: str, wanted):
    """A UserError if item `name` of a checkpoint holds other arrays than `wanted` (by path and shape).

    Missing or unreadable metadata is damage, an UnreadableCheckpoint.
    """
    try:
        saved = _array_shapes(ocp.StandardCheckpointHandler().metadata(step_dir / name))
    except Exception as error:  # a damaged metadata file raises JSON, IO or orbax errors
        raise UnreadableCheckpoint(f"{name} metadata: {_failed_read_reason(error, step_dir)}") from None
    wanted = _array_shapes(wanted)
    differences = [f"{path} only in the checkpoint" for path in saved.keys() - wanted.keys()]
    differences += [f"{path} only in this run" for path in wanted.keys() - saved.keys()]
    differences += [f"{path} {saved[path]} vs {wanted[path]}" for path in saved.keys() & wanted.keys()
                    if saved[path] != wanted[path]]
    if differences:
        shown = "; ".join(sorted(differences)[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise UserError(f"{step_dir}: its {name} differs from this run's ({shown}); resume with the settings it "
                        "was trained with, or train into a new MODEL_DIR")


def _array_shapes(tree) -> dict[str, tuple]:
    """{"0/v/encoder/...": shape} of a tree's arrays, whatever holds them (dicts, lists, named tuples)."""
    paths_and_leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape) for path, leaf in paths_and_leaves}
