"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters carry t5x's logical names (`embed`, `mlp`, `heads`, ...) and activations
names of their own (`activation_batch`, `activation_embed`, ...; see t5.py); sharding is
decided here, as data. `standard_logical_axis_rules` is the t5x default (the batch over
`data`, model-parallel dims over `model`), and `fsdp=True` also shards the `embed`
dimension of weights over `data` (ZeRO-3 style) while activations keep theirs whole.
Every name has exactly one rule, so the order of the rules does not matter.
"""

import math

import flax.linen as nn
import numpy as np
import gin
import jax
from jax.sharding import NamedSharding, PartitionSpec

from gtr_jax.errors import UserError

DATA, MODEL = "data", "model"


@gin.configurable
def make_mesh(mesh_shape=(-1, 1), axis_names=(DATA, MODEL), num_devices: int | None = None,
              devices=None) -> jax.sharding.Mesh:
    """A mesh over all devices (or the first `num_devices`); one -1 in `mesh_shape` takes the rest.

    `devices` (default `jax.devices()`) may be another backend's, e.g. a TPU topology's
    for ahead-of-time compilation.

    The axes are Auto, as flax's logical constraints need. A third leading axis (e.g.
    ('replica', 'data', 'model') for multi-slice) is allowed; the batch is then sharded
    over 'data' only.
    """
    devices = list(jax.devices() if devices is None else devices)[:num_devices]
    shape = list(mesh_shape)
    if shape.count(-1) > 1 or len(shape) != len(axis_names):
        raise UserError(f"mesh_shape {tuple(mesh_shape)} must name {len(axis_names)} axes with at most one -1")
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise UserError(f"mesh_shape {tuple(mesh_shape)} does not fit {len(devices)} devices")
    axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
    if len({getattr(d, "slice_index", 0) for d in devices}) > 1:
        # Several slices: slice-major order, so that a leading axis of the slice count spans slices.
        ordered = sorted(devices, key=lambda d: (d.slice_index, d.id))
        return jax.sharding.Mesh(np.array(ordered).reshape(shape), tuple(axis_names), axis_types=axis_types)
    return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=axis_types, devices=devices)


@gin.configurable
def standard_logical_axis_rules(fsdp: bool = False) -> tuple[tuple[str, str | None], ...]:
    """t5x's logical→mesh table, one rule per name; `fsdp` also shards weights' `embed` dim over `data`."""
    weights = (
        ("embed", DATA if fsdp else None),
        ("vocab", MODEL),
        ("mlp", MODEL),
        ("heads", MODEL),
        ("joined_kv", MODEL),
        ("relpos_buckets", None),
        ("projection", None),
        ("layers", None),
    )
    activations = (
        ("activation_batch", DATA),
        ("activation_length", None),
        ("activation_embed", None),
        ("activation_heads", MODEL),
        ("activation_kv", None),
        ("activation_mlp", MODEL),
    )
    return weights + activations


def param_shardings(boxed_params, mesh, rules):
    """NamedShardings of a tree of flax `LogicallyPartitioned` params (e.g. from eval_shape)."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_params), mesh, rules)


def replicated(mesh) -> NamedSharding:
    """A sharding that puts a full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) dimension split over `data`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def check_divisible(global_batch_size: int, mesh):
    """One clear error if the batch cannot be split evenly over `data` and over processes."""
    shards = mesh.shape[DATA]
    if global_batch_size % shards or global_batch_size % jax.process_count():
        raise UserError(
            f"BATCH_SIZE {global_batch_size} must be divisible by the data-parallel size {shards} "
            f"and by the process count {jax.process_count()}"
        )


def global_batch(host_batch: dict, mesh) -> dict:
    """This process's rows of the batch (numpy) as global jax.Arrays sharded over `data`."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}
