"""`gtr-jax compile`: the train step compiled for TPU topologies on this CPU host (needs libtpu)."""

import json
import math
import re

import flax.linen as nn
import gin
import jax
import pytest

pytest.importorskip("libtpu")

from gtr_jax.cli import main as cli  # noqa: E402
from gtr_jax.train import aot, checkpoints, partitioning, trainer  # noqa: E402

TINY = ["--gin_file=runs/demo_cpu.gin", "--gin.make_mesh.mesh_shape=(-1,1)"]


@pytest.fixture(autouse=True)
def _fresh_gin():
    """Each command parses its gin files into an empty, unlocked config."""
    gin.clear_config()
    yield
    gin.clear_config()


def _compile(tmp_path, *flags):
    path = tmp_path / "report.json"
    assert cli.main(["compile", *TINY, *flags, f"--json={path}"]) == 0
    return json.loads(path.read_text())


def _expected_parameter_bytes(num_devices, fsdp):
    """Bytes per device from the parameter shapes and the logical rules, by hand."""
    from gtr_jax.cli.gin_flags import parse_gin

    gin.clear_config()
    parse_gin(["runs/demo_cpu.gin"], ["MODEL_DIR = None"], [])
    boxed = checkpoints.boxed_param_shapes(gin.get_bindings("train")["model_config"])
    gin.clear_config()
    rules = dict(partitioning.standard_logical_axis_rules(fsdp=fsdp))
    axis_size = {"data": num_devices, "model": 1, None: 1}
    specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    shapes = jax.tree.leaves(nn.meta.unbox(boxed))
    total = 0
    for spec, shape in zip(specs, shapes):
        divisor = math.prod(axis_size[rules[name]] for name in spec if name is not None)
        total += math.prod(shape.shape) // divisor * shape.dtype.itemsize
    return total


@pytest.mark.parametrize("topology,devices,fsdp", [("v4-8", 4, False), ("v5litepod-8", 8, True)])
def test_parameter_bytes_per_device_follow_the_rules(tmp_path, topology, devices, fsdp):
    report = _compile(tmp_path, f"--topology={topology}", f"--gin.standard_logical_axis_rules.fsdp={fsdp}")
    assert report["num_devices"] == devices and report["fits"]
    assert report["parameter_bytes"] == _expected_parameter_bytes(devices, fsdp)
    assert 0 < report["total_bytes"] <= report["hbm_bytes"] and report["flops"] > 0


def test_multi_slice(tmp_path):
    report = _compile(tmp_path, "--topology=v4-8", "--num_slices=2")
    assert report["num_devices"] == 8 and report["mesh"] == {"data": 8, "model": 1}
    assert report["parameter_bytes"] == _expected_parameter_bytes(8, False)


def test_oversized_config_fails_with_one_line(capsys):
    status = cli.main(["compile", *TINY, "--topology=v5litepod-8", "--gin.T5Config.vocab_size=16777216",
                       "--gin.T5Config.d_model=512"])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert len(err.splitlines()) == 1 and "does not fit v5litepod-8" in err and "GiB missing" in err, err


def test_unknown_topology_is_a_user_error(capsys):
    assert cli.main(["compile", *TINY, "--topology=v4-7"]) == 1
    assert "v4-8" in capsys.readouterr().err


def _shardings(lowered):
    """The mesh axes and every sharding annotation (Shardy's `<@mesh, [...]>`) of the lowered StableHLO."""
    text = lowered.as_text()
    return re.findall(r"sdy\.mesh @\w+ = <\[[^\]]*\]", text) + re.findall(r"<@\w+, \[[^>]*\]>", text)


def test_tpu_step_is_the_step_train_runs_on_cpu():
    """Same code path: the CPU mesh's and the TPU topology's lowered steps carry the same shardings."""
    from gtr_jax.cli.gin_flags import parse_gin

    gin.clear_config()
    parse_gin(["runs/demo_cpu.gin"], ["MODEL_DIR = None", "standard_logical_axis_rules.fsdp = True"], [])
    try:
        arguments = aot.configured_train_arguments()
        lengths = gin.get_bindings("batch_iterator")["feature_lengths"]
        lowered = []
        for devices in (jax.devices()[:8], aot.topology_devices(aot.parse_accelerator("v5litepod-8"))):
            mesh = partitioning.make_mesh((4, 2), devices=devices)
            builder = trainer.build_step(mesh=mesh, **arguments)
            lowered.append(builder.lower(aot.abstract_batch(arguments["batch_size"], lengths, mesh)))
    finally:
        gin.clear_config()
    cpu, tpu = (_shardings(x) for x in lowered)
    assert len(cpu) > 10 and cpu == tpu
    assert any('"data"' in s for s in cpu[1:]) and any('"model"' in s for s in cpu[1:])
