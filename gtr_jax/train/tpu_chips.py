"""Cloud TPU slices as libtpu describes them on a host without a TPU: chip kinds, accelerator types, devices.

`parse_accelerator` maps the accelerator types users rent (`v4-128`, `v5litepod-256`,
`v5p-64`, `v6e-16`) to a libtpu topology name, and `topology_devices` returns that
slice's devices (libtpu's topology description; nothing runs on them), for
ahead-of-time compilation (`gtr_jax.train.aot`).
"""

import contextlib
import dataclasses
import os
import re

from gtr_jax.errors import UserError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation: its accelerator-type names, libtpu's topologies, and a chip's HBM and bf16 peak."""

    names: tuple[str, ...]
    topology_prefix: str
    chip_config: str
    chips_per_host_bounds: tuple[int, int, int]
    # Chips of a slice -> its topology (the shapes Cloud TPU offers for that many chips).
    shapes: dict
    hbm_bytes: int
    bf16_flops: float
    # The number in an accelerator type counts TensorCores (2 per chip) or chips.
    cores_per_chip: int

    def accelerator_types(self) -> list[str]:
        """The accelerator types of this chip kind that `parse_accelerator` knows, smallest first."""
        return [f"{self.names[0]}-{chips * self.cores_per_chip}" for chips in self.shapes]


_CUBES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
          512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"}
_SQUARES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}

# HBM and bf16 peak per chip, from Cloud TPU's system architecture pages:
#   v4:  https://cloud.google.com/tpu/docs/v4  (32 GiB HBM2, 275 TFLOPs; megacore: one JAX device per chip)
#   v5e: https://cloud.google.com/tpu/docs/v5e (16 GiB HBM2, 197 TFLOPs; one TensorCore per chip)
#   v5p: https://cloud.google.com/tpu/docs/v5p (95 GiB HBM2e, 459 TFLOPs; megacore: one JAX device per chip)
#   v6e: https://cloud.google.com/tpu/docs/v6e (32 GiB HBM, 918 TFLOPs; one TensorCore per chip)
# Accelerator types count TensorCores for v4 and v5p (v4-8 is 4 chips) and chips for v5e and v6e.
CHIPS = {
    "v4": Chip(("v4",), "v4", "megacore", (2, 2, 1), _CUBES, 32 * GIB, 275e12, 2),
    "v5e": Chip(("v5litepod", "v5e"), "v5e", "default", (2, 4, 1), {n: _SQUARES[n] for n in _SQUARES if n >= 4},
                16 * GIB, 197e12, 1),
    "v5p": Chip(("v5p",), "v5p", "megacore", (2, 2, 1), {**_CUBES, 4096: "16x16x16"}, 95 * GIB, 459e12, 2),
    "v6e": Chip(("v6e",), "v6e", "default", (2, 4, 1), _SQUARES, 32 * GIB, 918e12, 1),
}
_BY_NAME = {name: chip for chip in CHIPS.values() for name in chip.names}
_ACCELERATOR = re.compile(r"([a-z0-9]+)-(\d+)")


@dataclasses.dataclass(frozen=True)
class Slice:
    """A parsed accelerator type: its chip kind, chips per slice and libtpu topology name."""

    accelerator: str
    chip: Chip
    chips: int
    topology_name: str

    def host_bounds(self) -> tuple[int, int, int]:
        """Chips per host along each axis, no bigger than the slice (a v6e-4 is one host of 2x2)."""
        dims = [int(d) for d in self.topology_name.split(":")[1].split("x")] + [1]
        return tuple(min(bound, dim) for bound, dim in zip(self.chip.chips_per_host_bounds, dims))


def parse_accelerator(accelerator: str) -> Slice:
    """`v4-128`, `v5litepod-256` (or `v5e-256`), `v5p-64`, `v6e-16` as a Slice; a UserError lists the known ones."""
    match = _ACCELERATOR.fullmatch(accelerator.strip())
    chip = _BY_NAME.get(match.group(1)) if match else None
    count = int(match.group(2)) if match else 0
    if chip is None or count % chip.cores_per_chip or count // chip.cores_per_chip not in chip.shapes:
        supported = "; ".join(", ".join(chip.accelerator_types()) for chip in CHIPS.values())
        raise UserError(f"--topology={accelerator}: not a Cloud TPU accelerator type this knows; one of {supported}")
    chips = count // chip.cores_per_chip
    return Slice(accelerator, chip, chips, f"{chip.topology_prefix}:{chip.shapes[chips]}")


@contextlib.contextmanager
def native_stderr_silenced():
    """Drop what native code writes to stderr meanwhile (libtpu's warnings about a missing TPU)."""
    saved = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def topology_devices(tpu: Slice, num_slices: int = 1) -> list:
    """The devices of `num_slices` such slices, described by libtpu (no TPU needed)."""
    from jax.experimental import topologies

    # libtpu takes a host-wide lock file by default, which would make a second compile on
    # this host (a test, a benchmark) fail while one runs; nothing here opens a TPU.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        with native_stderr_silenced():
            description = topologies.get_topology_desc(
                platform="tpu", topology_name=tpu.topology_name, chip_config_name=tpu.chip.chip_config,
                chips_per_host_bounds=tpu.host_bounds(), num_slices=num_slices)
    except ModuleNotFoundError as error:
        raise UserError(f"compiling for TPU needs libtpu: pip install 'gtr-jax[tpu]' ({error})") from None
    except Exception as error:  # libtpu raises bare XlaRuntimeErrors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"libtpu cannot describe {tpu.accelerator} ({tpu.topology_name}): {reason}") from None
    devices = list(description.devices)
    if len(devices) != tpu.chips * num_slices:
        raise UserError(f"libtpu describes {len(devices)} devices for {tpu.accelerator} x{num_slices}, "
                        f"not {tpu.chips * num_slices}")
    return devices

