"""Ahead-of-time compilation of the train step for a Cloud TPU slice, on a CPU host.

`compile_train_step` builds the mesh from a TPU topology's devices (libtpu describes
them without a TPU attached), builds the step with `trainer.build_step`, the function
`train` itself uses, from abstract shapes only (no parameter is allocated, no data is
read: the batch comes from TASK_FEATURE_LENGTHS and BATCH_SIZE), and compiles it with
XLA's TPU compiler. The `Report` gives the per-device memory of that program against
the chip's HBM; a program that does not fit raises a one-line UserError.
"""

import contextlib
import copy
import dataclasses
import inspect
import math
import os
import re
import tempfile
import time

import gin
import jax
import jax.numpy as jnp

from gtr_jax.data import features
from gtr_jax.errors import UserError
from gtr_jax.train import partitioning, trainer
from gtr_jax.train.partitioning import DATA

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation: how libtpu names its topologies, and a chip's HBM and bf16 peak."""

    topology_prefix: str
    chip_config: str
    chips_per_host_bounds: tuple[int, int, int]
    # Chips of a slice -> its topology (the shapes Cloud TPU offers for that many chips).
    shapes: dict
    hbm_bytes: int
    bf16_flops: float


# HBM and bf16 peak per chip from Cloud TPU's system architecture pages:
#   v4:  https://cloud.google.com/tpu/docs/v4  (32 GiB HBM2, 275 TFLOPs; megacore: one JAX device per chip)
#   v5e: https://cloud.google.com/tpu/docs/v5e (16 GB HBM2, 197 TFLOPs; one TensorCore per chip)
# Accelerator types name TensorCores for v4 (v4-8 is 4 chips) and chips for v5e (v5litepod-8 is 8 chips).
CHIPS = {
    "v4": Chip("v4", "megacore", (2, 2, 1),
               {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
                512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"},
               32 * GIB, 275e12),
    "v5e": Chip("v5e", "default", (2, 4, 1),
                {8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
                16 * GIB, 197e12),
}
_ACCELERATOR = re.compile(r"(v4|v5litepod|v5e)-(\d+)")


@dataclasses.dataclass(frozen=True)
class Slice:
    """A parsed accelerator type: its chip kind, chips per slice and libtpu topology name."""

    accelerator: str
    chip: Chip
    chips: int
    topology_name: str


def parse_accelerator(accelerator: str) -> Slice:
    """`v4-128`, `v5litepod-256` (or `v5e-256`) as a Slice; a UserError names the ones supported."""
    match = _ACCELERATOR.fullmatch(accelerator.strip())
    supported = ", ".join([f"v4-{2 * n}" for n in CHIPS["v4"].shapes] + [f"v5litepod-{n}" for n in CHIPS["v5e"].shapes])
    if not match:
        raise UserError(f"--topology={accelerator}: not a TPU accelerator type this knows; one of {supported}")
    kind, count = match.group(1), int(match.group(2))
    chip = CHIPS["v4" if kind == "v4" else "v5e"]
    chips = count // 2 if kind == "v4" else count
    if chips not in chip.shapes or (kind == "v4" and count % 2):
        raise UserError(f"--topology={accelerator}: no such slice; one of {supported}")
    return Slice(accelerator, chip, chips, f"{chip.topology_prefix}:{chip.shapes[chips]}")


@contextlib.contextmanager
def _native_stderr_captured(sink: list):
    """Keep what native code writes to stderr meanwhile (libtpu's warnings about a missing TPU) in `sink`."""
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sink.append(captured.read().decode("utf-8", errors="replace"))


def topology_devices(tpu: Slice, num_slices: int = 1) -> list:
    """The devices of `num_slices` such slices, described by libtpu (no TPU needed)."""
    from jax.experimental import topologies

    chatter = []
    try:
        with _native_stderr_captured(chatter):
            description = topologies.get_topology_desc(
                platform="tpu", topology_name=tpu.topology_name, chip_config_name=tpu.chip.chip_config,
                chips_per_host_bounds=tpu.chip.chips_per_host_bounds, num_slices=num_slices)
    except ModuleNotFoundError as error:
        raise UserError(f"compiling for TPU needs libtpu: pip install 'gtr-jax[tpu]' ({error})") from None
    except Exception as error:  # libtpu raises bare XlaRuntimeErrors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"libtpu cannot describe {tpu.accelerator} ({tpu.topology_name}): {reason}") from None
    return list(description.devices)


def configured_train_arguments(**overrides) -> dict:
    """`train`'s gin-bound arguments (its defaults where unbound), evaluating only the parts a step needs."""
    bindings = gin.get_bindings("train", resolve_references=False)
    defaults = {name: p.default for name, p in inspect.signature(trainer.train).parameters.items()}
    names = ("model_config", "optimizer", "loss", "batch_size", "logical_axis_rules", "grad_cache_chunk_size",
             "temperature", "learn_temperature", "seed")
    arguments = {name: copy.deepcopy(bindings[name]) if name in bindings else defaults[name] for name in names}
    arguments.update(overrides)
    for name, value in arguments.items():
        if value is gin.REQUIRED:
            raise UserError(f"gin: train.{name} is not set")
    return arguments


def abstract_batch(batch_size: int, feature_lengths: dict, mesh, num_negatives: int = 0) -> dict:
    """The global batch `batch_iterator` would yield, as ShapeDtypeStructs sharded over `data`."""
    lengths = {**features.DEFAULT_FEATURE_LENGTHS, **(feature_lengths or {})}
    shapes = {"query_tokens": (batch_size, lengths["query"]), "doc_tokens": (batch_size, lengths["doc"]),
              "query_ids": (batch_size,), "doc_ids": (batch_size,)}
    if num_negatives:
        shapes.update(negative_tokens=(batch_size, num_negatives, lengths["doc"]),
                      negative_ids=(batch_size, num_negatives))
    sharding = partitioning.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding) for k, shape in shapes.items()}


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs carrying shardings (its shard of each)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


@dataclasses.dataclass
class Report:
    """The compiled train step's plan: per-device bytes against HBM, FLOPs and compile time."""

    accelerator: str
    num_slices: int
    topology: str
    device_kind: str
    num_devices: int
    mesh: dict
    batch_size: int
    num_parameters: int
    parameter_bytes: int
    optimizer_bytes: int
    batch_bytes: int
    temp_bytes: int
    total_bytes: int
    hbm_bytes: int
    flops: float
    step_seconds_at_peak: float
    compile_seconds: float

    @property
    def fits(self) -> bool:
        """Whether the program's per-device memory fits the chip's HBM."""
        return self.total_bytes <= self.hbm_bytes

    def as_dict(self) -> dict:
        """The report as JSON-ready fields, with `fits`."""
        return {**dataclasses.asdict(self), "fits": self.fits}

    def text(self) -> str:
        """A few human-readable lines."""
        gib = lambda n: f"{n / GIB:8.3f} GiB"  # noqa: E731
        rate = self.batch_size / self.step_seconds_at_peak if self.step_seconds_at_peak else float("nan")
        return "\n".join([
            f"train step for {self.accelerator} x{self.num_slices} ({self.topology}, {self.num_devices} "
            f"{self.device_kind} devices), mesh {self.mesh}, batch {self.batch_size}, "
            f"{self.num_parameters:,} parameters",
            "per device:",
            f"  parameters       {gib(self.parameter_bytes)}",
            f"  optimizer state  {gib(self.optimizer_bytes)}",
            f"  batch            {gib(self.batch_bytes)}",
            f"  XLA temporaries  {gib(self.temp_bytes)}",
            f"  total            {gib(self.total_bytes)} of {self.hbm_bytes / GIB:.0f} GiB HBM "
            f"({'fits' if self.fits else 'does not fit'})",
            f"compiled FLOPs per device per step: {self.flops:.3e}; at the chip's bf16 peak a step takes "
            f"{self.step_seconds_at_peak * 1e3:.3f} ms ({rate:,.0f} examples/s)",
            f"compiled in {self.compile_seconds:.1f} s",
        ])


def compile_train_step(accelerator: str, num_slices: int = 1, num_negatives: int = 0) -> Report:
    """Compile the gin-configured run's train step for `num_slices` slices of `accelerator`; its Report.

    Raises a one-line UserError when the program does not fit the chip's HBM.
    """
    tpu = parse_accelerator(accelerator)
    devices = topology_devices(tpu, num_slices)
    mesh = partitioning.make_mesh(devices=devices)
    arguments = configured_train_arguments()
    if arguments["logical_axis_rules"] is None:
        arguments["logical_axis_rules"] = partitioning.standard_logical_axis_rules(fsdp=False)
    builder = trainer.build_step(mesh=mesh, **arguments)
    feature_lengths = gin.get_bindings("batch_iterator").get("feature_lengths")
    batch = abstract_batch(arguments["batch_size"], feature_lengths, mesh, num_negatives)
    state = builder.abstract_state
    breakdown = {"parameters": per_device_bytes(state.params),
                 "optimizer state": per_device_bytes((state.opt_state, state.temperature, state.step)),
                 "batch": per_device_bytes(batch)}
    start = time.perf_counter()
    chatter = []
    try:
        with _native_stderr_captured(chatter):
            compiled = builder.lower(batch).compile()
    except Exception as error:  # XLA's TPU compiler refuses a program over HBM at compile time
        message = str(error)
        if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
            raise
        _raise_does_not_fit(tpu, num_slices, mesh, breakdown, message)

    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
             + memory.temp_size_in_bytes)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))
    report = Report(
        accelerator=tpu.accelerator, num_slices=num_slices, topology=tpu.topology_name,
        device_kind=devices[0].device_kind, num_devices=len(devices), mesh=dict(mesh.shape),
        batch_size=arguments["batch_size"], num_parameters=sum(x.size for x in jax.tree.leaves(state.params)),
        parameter_bytes=breakdown["parameters"], optimizer_bytes=breakdown["optimizer state"],
        batch_bytes=breakdown["batch"], temp_bytes=memory.temp_size_in_bytes, total_bytes=total,
        hbm_bytes=tpu.chip.hbm_bytes, flops=flops, step_seconds_at_peak=flops / tpu.chip.bf16_flops,
        compile_seconds=seconds)
    if not report.fits:
        _raise_does_not_fit(tpu, num_slices, mesh, {**breakdown, "XLA temporaries": memory.temp_size_in_bytes},
                            f"Exceeded hbm capacity by {total - tpu.chip.hbm_bytes}")
    return report


_SIZE = r"([\d.]+)\s*([KMGT]?)i?B?"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


def _parse_out_of_memory(message: str) -> tuple[float | None, float | None]:
    """(bytes missing, bytes of temporaries) from XLA's TPU out-of-memory message, None where not stated."""
    required = re.search(r"required for HLO temporaries \(" + _SIZE + r"\) exceeds available HBM \(" + _SIZE + r"\)",
                         message)
    if required:
        temporaries = _bytes(*required.group(1, 2))
        return temporaries - _bytes(*required.group(3, 4)), temporaries
    exceeded = re.search(r"[Ee]xceeded \w+ capacity by " + _SIZE, message)
    return (_bytes(*exceeded.group(1, 2)) if exceeded else None), None


def _raise_does_not_fit(tpu: Slice, num_slices: int, mesh, breakdown: dict, message: str):
    """One line: how much is missing per device, the biggest contributors, and the knobs that exist."""
    missing, temporaries = _parse_out_of_memory(message)
    if temporaries is not None:
        breakdown = {**breakdown, "XLA temporaries": temporaries}
    missing = f"{missing / GIB:.2f} GiB" if missing is not None else "an unknown amount"
    biggest = ", ".join(f"{name} {size / GIB:.2f} GiB" for name, size in
                        sorted(breakdown.items(), key=lambda item: -item[1])[:3])
    fsdp = "" if mesh.shape[DATA] == 1 else "--gin.standard_logical_axis_rules.fsdp=True, "
    raise UserError(
        f"the train step does not fit {tpu.accelerator} x{num_slices} ({tpu.chip.hbm_bytes / GIB:.0f} GiB HBM per "
        f"device): {missing} missing per device; biggest: {biggest}; try {fsdp}--gin.T5Config.remat=True, "
        f"--gin.T5Config.scan_layers=True, --gin.train.grad_cache_chunk_size=N, a smaller BATCH_SIZE or a bigger slice")
