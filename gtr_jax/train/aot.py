"""Ahead-of-time compilation of the train and encode steps for a Cloud TPU slice, on a CPU host.

`compile_train_step` builds the mesh from a TPU topology's devices (`tpu_chips`: libtpu
describes them without a TPU attached), builds the step with `trainer.build_step`, the
function `train` itself uses, from abstract shapes only (no parameter is allocated, no data
is read: the batch comes from TASK_FEATURE_LENGTHS and BATCH_SIZE), and compiles it with
XLA's TPU compiler. `compile_encode_step` does the same for `encoding.EncodeStep`, the
step `encode` and `evaluate` run. The `Report` gives the program's per-device memory
against the chip's HBM, its FLOPs as XLA counts them beside the model FLOPs counted from
the shapes (`flops`), a roofline step time and the compile time; a program that does not
fit raises `DoesNotFit`, a one-line UserError that carries the report.
"""

import copy
import dataclasses
import inspect
import math
import re
import time

import gin
import jax
import jax.numpy as jnp
from flax.core import meta

from gtr_jax.data import features
from gtr_jax.errors import UserError
from gtr_jax.eval import encoding
from gtr_jax.train import checkpoints, flops, partitioning, trainer
from gtr_jax.train.partitioning import DATA, MODEL
from gtr_jax.train.tpu_chips import GIB, Slice, native_stderr_silenced, parse_accelerator, topology_devices


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


def feature_lengths() -> dict:
    """The run's TASK_FEATURE_LENGTHS (`batch_iterator.feature_lengths`), defaults filled in."""
    return {**features.DEFAULT_FEATURE_LENGTHS, **(gin.get_bindings("batch_iterator").get("feature_lengths") or {})}


def abstract_batch(batch_size: int, lengths: dict, mesh, num_negatives: int = 0) -> dict:
    """The global batch `batch_iterator` would yield, as ShapeDtypeStructs sharded over `data`."""
    lengths = {**features.DEFAULT_FEATURE_LENGTHS, **(lengths or {})}
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
    """A compiled step's plan: per-device bytes against HBM, FLOPs, a roofline step time, compile time.

    FLOPs: `model_flops` is the whole step's (all devices) as `flops` counts them;
    `xla_flops_per_device` is XLA's cost analysis of the compiled program, which is per
    device (the SPMD-partitioned program) and includes recomputed forward passes, but
    counts a loop's body once: with `scan_layers` it leaves out all layers but one, with
    GradCache all chunks but one. The roofline divides the model FLOPs by the slice's bf16
    peak (`peak_flops_per_chip` × chips), and by that peak × `mfu` (compute only: HBM
    bandwidth and collectives are left out). `temp_bytes`, `total_bytes` and
    `xla_flops_per_device` are None where XLA refused the program without saying them.
    """

    step: str
    accelerator: str
    num_slices: int
    topology: str
    device_kind: str
    num_devices: int
    mesh: dict
    settings: dict
    batch_size: int
    lengths: dict
    num_negatives: int
    num_parameters: int
    parameter_bytes: int
    optimizer_bytes: int
    batch_bytes: int
    output_bytes: int | None
    temp_bytes: int | None
    total_bytes: int | None
    hbm_bytes: int
    xla_flops_per_device: float | None
    model_flops: int
    peak_flops_per_chip: float
    mfu: float
    compile_seconds: float

    @property
    def fits(self) -> bool:
        """Whether the program's per-device memory fits the chip's HBM."""
        return self.total_bytes is not None and self.total_bytes <= self.hbm_bytes

    def seconds(self, mfu: float = 1.0) -> float:
        """Roofline step time: the model FLOPs at `mfu` of the slice's bf16 peak."""
        return self.model_flops / (self.num_devices * self.peak_flops_per_chip * mfu)

    def as_dict(self) -> dict:
        """The report as JSON-ready fields, with `fits`, roofline times and examples/s."""
        return {**dataclasses.asdict(self), "fits": self.fits,
                "xla_flops": (None if self.xla_flops_per_device is None
                              else self.xla_flops_per_device * self.num_devices),
                "step_seconds_at_peak": self.seconds(), "examples_per_second_at_peak": self.batch_size / self.seconds(),
                "step_seconds_at_mfu": self.seconds(self.mfu),
                "examples_per_second_at_mfu": self.batch_size / self.seconds(self.mfu)}

    def text(self) -> str:
        """A few human-readable lines."""
        gib = lambda n: "       ?" if n is None else f"{n / GIB:8.3f} GiB"  # noqa: E731
        shapes = ", ".join(f"{tower} {length}" for tower, length in self.lengths.items())
        plural = "" if self.num_negatives == 1 else "s"
        negatives = f", {self.num_negatives} hard negative{plural}" if self.step == "train" else ""
        memory = [("parameters", self.parameter_bytes), ("optimizer state", self.optimizer_bytes),
                  ("batch", self.batch_bytes), ("outputs", self.output_bytes), ("XLA temporaries", self.temp_bytes)]
        if self.step == "encode":  # an encode step holds no optimizer state
            memory = [(name, size) for name, size in memory if name != "optimizer state"]
        loops = " and ".join(name for name, on in (("the scanned layers", self.settings["scan_layers"]),
                                                   ("GradCache's chunks", self.settings["grad_cache_chunk_size"])) if on)
        xla = ("XLA's count unknown" if self.xla_flops_per_device is None else
               f"XLA's cost analysis {self.xla_flops_per_device * self.num_devices:.3e} "
               f"({self.xla_flops_per_device:.3e} per device x {self.num_devices}"
               f"{'; it counts a loop body once: ' + loops if loops else ''})")

        def rate(mfu):
            return f"{self.seconds(mfu) * 1e3:,.3f} ms, {self.batch_size / self.seconds(mfu):,.0f} examples/s"

        return "\n".join([
            f"{self.step} step for {self.accelerator} x{self.num_slices} ({self.topology}, {self.num_devices} "
            f"{self.device_kind} devices), mesh {self.mesh}, batch {self.batch_size} ({shapes} tokens{negatives}), "
            f"{self.num_parameters:,} parameters",
            "per device:",
            *(f"  {name:<17}{gib(size)}" for name, size in memory),
            f"  {'total':<17}{gib(self.total_bytes)} of {self.hbm_bytes / GIB:.0f} GiB HBM "
            f"({'fits' if self.fits else 'does not fit'})",
            f"FLOPs per step: model {self.model_flops:.3e} (gtr_jax.train.flops), {xla}",
            f"roofline at the chip's bf16 peak ({self.peak_flops_per_chip / 1e12:.0f} TFLOP/s): {rate(1.0)}; "
            f"at {self.mfu:.0%} MFU (--mfu): {rate(self.mfu)}",
            f"compiled in {self.compile_seconds:.1f} s",
        ])


class DoesNotFit(UserError):
    """The compiled step needs more memory per device than the chip's HBM; `report` says how much."""

    def __init__(self, message: str, report: Report):
        super().__init__(message)
        self.report = report


def compile_train_step(accelerator: str, num_slices: int = 1, num_negatives: int = 0, mfu: float = 0.5) -> Report:
    """Compile the gin-configured run's train step for `num_slices` slices of `accelerator`; its Report.

    Raises DoesNotFit when the program does not fit the chip's HBM.
    """
    _check_mfu(mfu)
    tpu = parse_accelerator(accelerator)
    devices = topology_devices(tpu, num_slices)
    mesh = partitioning.make_mesh(devices=devices)
    arguments = configured_train_arguments()
    if arguments["logical_axis_rules"] is None:
        arguments["logical_axis_rules"] = partitioning.standard_logical_axis_rules(fsdp=False)
    builder = trainer.build_step(mesh=mesh, **arguments)
    lengths = feature_lengths()
    batch = abstract_batch(arguments["batch_size"], lengths, mesh, num_negatives)
    state = builder.abstract_state
    model_config = arguments["model_config"]
    fields = dict(
        step="train", batch_size=arguments["batch_size"], lengths={"query": lengths["query"], "doc": lengths["doc"]},
        num_negatives=num_negatives, num_parameters=sum(x.size for x in jax.tree.leaves(state.params)),
        parameter_bytes=per_device_bytes(state.params),
        optimizer_bytes=per_device_bytes((state.opt_state, state.temperature, state.step)),
        batch_bytes=per_device_bytes(batch),
        model_flops=flops.train_step_flops(model_config, arguments["batch_size"], lengths, num_negatives,
                                           arguments["loss"]),
        settings=_settings(model_config, arguments["logical_axis_rules"], arguments["grad_cache_chunk_size"]))
    return _compile(lambda: builder.lower(batch), tpu, num_slices, devices, mesh, fields, mfu)


def compile_encode_step(accelerator: str, num_slices: int = 1, batch_size: int = 64, tower: str = "doc",
                        max_length: int | None = None, mfu: float = 0.5) -> Report:
    """Compile the encode step `encode`/`evaluate` run, for the gin-configured model, tower and batch; its Report.

    The batch is `batch_size` rounded up to the data-parallel size, as encoding does, of
    `max_length` tokens (default: the model's length for the tower, the longest bucket).
    Raises DoesNotFit when the program does not fit the chip's HBM.
    """
    _check_mfu(mfu)
    if tower not in ("query", "doc"):
        raise UserError(f"--tower={tower}: 'query' or 'doc'")
    tpu = parse_accelerator(accelerator)
    devices = topology_devices(tpu, num_slices)
    mesh = partitioning.make_mesh(devices=devices)
    model_config = configured_train_arguments()["model_config"]
    length = max_length or model_config.max_length(tower)
    step, params, tokens = encode_arguments(model_config, mesh, batch_size, length)
    rows = tokens.shape[0]
    fields = dict(
        step="encode", batch_size=rows, lengths={tower: length}, num_negatives=0,
        num_parameters=sum(x.size for x in jax.tree.leaves(params)), parameter_bytes=per_device_bytes(params),
        optimizer_bytes=0, batch_bytes=per_device_bytes(tokens),
        model_flops=flops.encode_step_flops(model_config, rows, length),
        settings=_settings(model_config, partitioning.standard_logical_axis_rules(), None))
    return _compile(lambda: step.lower(params, tokens, tower), tpu, num_slices, devices, mesh, fields, mfu)


def _check_mfu(mfu: float):
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu={mfu}: a fraction in (0, 1]")


def encode_arguments(model_config, mesh, batch_size: int, length: int):
    """(EncodeStep, abstract params, abstract tokens) of an encode batch on `mesh`, placed as encoding places them."""
    step = encoding.EncodeStep(model_config.build(), mesh)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          meta.unbox(checkpoints.boxed_param_shapes(model_config)),
                          encoding.param_shardings(model_config, mesh))
    tokens = jax.ShapeDtypeStruct((step.batch_rows(batch_size), length), jnp.int32,
                                  sharding=partitioning.batch_sharding(mesh))
    return step, params, tokens


def _settings(model_config, rules, grad_cache_chunk_size) -> dict:
    """The knobs that move memory and time, as the report states them."""
    encoder = model_config.encoder
    return {"tower": model_config.tower, "dtype": encoder.dtype, "remat": encoder.remat,
            "scan_layers": encoder.scan_layers, "fsdp": dict(rules).get("embed") == DATA,
            "grad_cache_chunk_size": grad_cache_chunk_size}


def _compile(lower, tpu: Slice, num_slices: int, devices, mesh, fields: dict, mfu: float) -> Report:
    """Lower and compile with XLA's TPU compiler; the Report, or DoesNotFit."""
    report = Report(accelerator=tpu.accelerator, num_slices=num_slices, topology=tpu.topology_name,
                    device_kind=devices[0].device_kind, num_devices=len(devices), mesh=dict(mesh.shape),
                    hbm_bytes=tpu.chip.hbm_bytes, peak_flops_per_chip=tpu.chip.bf16_flops, mfu=mfu,
                    output_bytes=None, temp_bytes=None, total_bytes=None, xla_flops_per_device=None,
                    compile_seconds=0.0, **fields)
    start = time.perf_counter()
    try:
        with native_stderr_silenced():
            compiled = lower().compile()
    except Exception as error:  # XLA's TPU compiler refuses a program over HBM at compile time
        message = str(error)
        if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
            raise
        report.compile_seconds = time.perf_counter() - start
        missing, report.temp_bytes = _parse_out_of_memory(message)
        report.total_bytes = None if missing is None else int(report.hbm_bytes + missing)
        _raise_does_not_fit(report, missing)
    report.compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    report.output_bytes = memory.output_size_in_bytes - memory.alias_size_in_bytes
    report.temp_bytes = memory.temp_size_in_bytes
    report.total_bytes = memory.argument_size_in_bytes + report.output_bytes + memory.temp_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    report.xla_flops_per_device = float((cost or {}).get("flops", 0.0))
    if not report.fits:
        _raise_does_not_fit(report, report.total_bytes - report.hbm_bytes)
    return report


_SIZE = r"([\d.]+)\s*([KMGT]?)i?B?"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


def _parse_out_of_memory(message: str) -> tuple[float | None, int | None]:
    """(bytes missing, bytes of temporaries) from XLA's TPU out-of-memory message, None where not stated."""
    required = re.search(r"required for HLO temporaries \(" + _SIZE + r"\) exceeds available HBM \(" + _SIZE + r"\)",
                         message)
    if required:
        temporaries = _bytes(*required.group(1, 2))
        return temporaries - _bytes(*required.group(3, 4)), int(temporaries)
    exceeded = re.search(r"[Ee]xceeded \w+ capacity by " + _SIZE, message)
    return (_bytes(*exceeded.group(1, 2)) if exceeded else None), None


def _raise_does_not_fit(report: Report, missing: float | None):
    """One line: how much is missing per device, the biggest contributors, and the knobs not yet used."""
    parts = {"parameters": report.parameter_bytes, "optimizer state": report.optimizer_bytes,
             "batch": report.batch_bytes, "outputs": report.output_bytes, "XLA temporaries": report.temp_bytes}
    biggest = ", ".join(f"{name} {size / GIB:.2f} GiB" for name, size in
                        sorted(((n, s) for n, s in parts.items() if s), key=lambda item: -item[1])[:3])
    settings, knobs = report.settings, []
    if not settings["fsdp"] and report.mesh[DATA] > 1:
        knobs.append("--gin.standard_logical_axis_rules.fsdp=True")
    if report.mesh[MODEL] == 1:
        knobs.append("--gin.make_mesh.mesh_shape='(-1,N)' (N-way model parallelism)")
    if report.step == "train":
        knobs += [f"--gin.T5Config.{knob}=True" for knob in ("remat", "scan_layers") if not settings[knob]]
        if settings["grad_cache_chunk_size"] is None:
            knobs.append("--gin.train.grad_cache_chunk_size=N")
        knobs.append("a smaller BATCH_SIZE")
    else:
        knobs.append("a smaller --encode_batch_size")
    amount = "an unknown amount" if missing is None else f"{missing / GIB:.2f} GiB"
    raise DoesNotFit(
        f"the {report.step} step does not fit {report.accelerator} x{report.num_slices} "
        f"({report.hbm_bytes / GIB:.0f} GiB HBM per device): {amount} missing per device; biggest: {biggest}; "
        f"try {', '.join(knobs)} or a bigger slice", report)
