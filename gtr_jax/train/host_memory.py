"""Keep the host memory XLA frees after each step, instead of handing it back to the OS.

XLA's CPU runtime allocates the temporaries of each execution as one buffer (gigabytes
for a T5-small train step) and frees it when the execution ends. glibc's malloc serves a
request that large with a fresh `mmap` and `munmap`s it on free, so every step
page-faults the whole buffer back in, zero-filled by the kernel, a sizeable part of the
step's time (figures in docs/performance.md). `retain_freed_memory` switches glibc
to keeping freed memory in its heap for the next step to reuse. The process's resident
memory then stays at its high-water mark instead of dipping between steps.

This only matters when JAX computes on the host CPU: an accelerator keeps the step's
temporaries in its own memory. The `gtr-jax` command line calls
`retain_freed_memory_if_jax_runs_on_cpu` before it imports JAX; set
GTR_JAX_KEEP_DEFAULT_MALLOC=1 to leave glibc's defaults alone.
"""

import ctypes
import glob
import importlib.metadata
import importlib.util
import os

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
OPT_OUT_VARIABLE = "GTR_JAX_KEEP_DEFAULT_MALLOC"


def retain_freed_memory() -> bool:
    """Make glibc reuse freed memory rather than return it to the OS; False where not glibc.

    Three settings, all needed: one arena for every thread (a thread's own arena serves
    a large request with `mmap` whatever `M_MMAP_MAX` says), no `mmap` for large blocks
    of that arena, and no trimming of its heap. Call it before JAX starts its threads;
    threads that already have an arena keep it.
    """
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError):  # not a glibc system (macOS, musl)
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)


def jax_will_run_on_cpu() -> bool:
    """Whether JAX's default backend will be the host CPU, decided without importing JAX.

    JAX_PLATFORMS names the backends in order of preference when set; otherwise JAX
    prefers any installed accelerator plugin (libtpu, or a `jax_plugins` package or entry
    point such as the CUDA plugin); libtpu counts only where a TPU chip is attached.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if importlib.util.find_spec("libtpu") and tpu_chip_attached():
        return False
    if importlib.util.find_spec("jax_plugins"):
        return False
    return not importlib.metadata.entry_points(group="jax_plugins")


# Google's PCI vendor id and the device ids of TPU chips (v3 to TPU7x), as jax/_src/hardware_utils.py
# lists them: JAX opens its TPU backend only where one is attached, and computes on the CPU otherwise
# (libtpu alone is also installed on CPU hosts, to compile for TPU topologies ahead of time).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}


def tpu_chip_attached() -> bool:
    """Whether a TPU chip is on this host's PCI bus (what JAX checks before opening its TPU backend)."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f, open(os.path.join(os.path.dirname(vendor), "device")) as g:
                if f.read().strip() == _GOOGLE_PCI_VENDOR and g.read().strip() in _TPU_PCI_DEVICES:
                    return True
        except OSError:
            continue
    return False


def retain_freed_memory_if_jax_runs_on_cpu() -> bool:
    """`retain_freed_memory` when JAX will compute on the CPU and the user has not opted out."""
    if os.environ.get(OPT_OUT_VARIABLE, "") not in ("", "0") or not jax_will_run_on_cpu():
        return False
    return retain_freed_memory()
