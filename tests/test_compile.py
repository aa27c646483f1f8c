"""`gtr-jax compile`: the train and encode steps compiled for TPU topologies on this CPU host (needs libtpu)."""

import json
import math
import re

import flax.linen as nn
import gin
import jax
import jax.extend.core as jax_core
import numpy as np
import pytest
from flax.core import meta

pytest.importorskip("libtpu")

from gtr_jax.cli import main as cli  # noqa: E402
from gtr_jax.cli.gin_flags import parse_gin  # noqa: E402
from gtr_jax.eval import encoding  # noqa: E402
from gtr_jax.losses import LossConfig  # noqa: E402
from gtr_jax.model import dual_encoder, t5  # noqa: E402
from gtr_jax.train import aot, checkpoints, flops, partitioning, tpu_chips, trainer  # noqa: E402

TINY = ["--gin_file=runs/demo_cpu.gin", "--gin.make_mesh.mesh_shape=(-1,1)"]


@pytest.fixture(autouse=True)
def _fresh_gin():
    """Each command parses its gin files into an empty, unlocked config."""
    gin.clear_config()
    yield
    gin.clear_config()


def _compile(path, *flags):
    gin.clear_config()
    assert cli.main(["compile", *TINY, *flags, f"--json={path}"]) == 0
    gin.clear_config()
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The tiny run's steps compiled once for the module: {case: report}."""
    directory = tmp_path_factory.mktemp("reports")
    cases = {"train v4-8": ["--topology=v4-8"],
             "train v5litepod-8 fsdp": ["--topology=v5litepod-8", "--gin.standard_logical_axis_rules.fsdp=True"],
             "encode v4-8": ["--topology=v4-8", "--step=encode", "--encode_batch_size=30"],
             "encode v4-8 fsdp query": ["--topology=v4-8", "--step=encode", "--tower=query",
                                        "--gin.standard_logical_axis_rules.fsdp=True"]}
    return {name: _compile(directory / f"{n}.json", *flags) for n, (name, flags) in enumerate(cases.items())}


def _expected_parameter_bytes(num_devices, fsdp, *bindings):
    """Bytes per device from the parameter shapes and the logical rules, by hand."""
    gin.clear_config()
    parse_gin(["runs/demo_cpu.gin"], ["MODEL_DIR = None", *bindings], [])
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


@pytest.mark.parametrize("case,devices,fsdp", [("train v4-8", 4, False), ("train v5litepod-8 fsdp", 8, True),
                                               ("encode v4-8", 4, False), ("encode v4-8 fsdp query", 4, True)])
def test_parameter_bytes_per_device_follow_the_rules(reports, case, devices, fsdp):
    report = reports[case]
    assert report["num_devices"] == devices and report["fits"] and report["settings"]["fsdp"] == fsdp
    assert report["parameter_bytes"] == _expected_parameter_bytes(devices, fsdp)
    assert 0 < report["total_bytes"] <= report["hbm_bytes"] and report["xla_flops_per_device"] > 0
    assert report["compile_seconds"] > 0


def test_encode_report_states_its_batch(reports):
    """Encoding rounds the batch up to the data-parallel size and pads to the tower's length."""
    doc, query = reports["encode v4-8"], reports["encode v4-8 fsdp query"]
    assert doc["batch_size"] == 32 and doc["lengths"] == {"doc": 128} and doc["optimizer_bytes"] == 0
    assert query["batch_size"] == 64 and query["lengths"] == {"query": 32}
    assert doc["batch_bytes"] == 32 // 4 * 128 * 4
    assert doc["output_bytes"] == 32 * 128 * 4  # the replicated [batch, embed_dim] float32 embeddings


def test_multi_slice(tmp_path):
    report = _compile(tmp_path / "report.json", "--topology=v4-8", "--num_slices=2")
    assert report["num_devices"] == 8 and report["mesh"] == {"data": 8, "model": 1}
    assert report["parameter_bytes"] == _expected_parameter_bytes(8, False)


@pytest.mark.parametrize("topology,devices,kind,hbm_gib", [("v5p-8", 4, "TPU v5", 95), ("v6e-4", 4, "TPU v6 lite", 32)])
def test_v5p_and_v6e(tmp_path, topology, devices, kind, hbm_gib):
    report = _compile(tmp_path / "report.json", f"--topology={topology}", "--step=encode")
    assert report["num_devices"] == devices and report["device_kind"] == kind
    assert report["hbm_bytes"] == hbm_gib * 2**30 and report["fits"]
    assert report["parameter_bytes"] == _expected_parameter_bytes(devices, False)


def test_oversized_config_fails_with_one_line_and_writes_its_report(capsys, tmp_path):
    path = tmp_path / "report.json"
    status = cli.main(["compile", *TINY, "--topology=v5litepod-8", "--gin.T5Config.vocab_size=16777216",
                       "--gin.T5Config.d_model=512", f"--json={path}"])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert len(err.splitlines()) == 1 and "does not fit v5litepod-8" in err and "GiB missing" in err, err
    # Only the knobs not in use yet: this run has no fsdp, remat, scan or GradCache.
    assert "fsdp=True" in err and "remat=True" in err and "grad_cache_chunk_size" in err
    report = json.loads(path.read_text())
    assert not report["fits"] and report["total_bytes"] > report["hbm_bytes"]
    assert report["parameter_bytes"] == _expected_parameter_bytes(8, False, "T5Config.vocab_size = 16777216",
                                                                  "T5Config.d_model = 512")


@pytest.mark.parametrize("topology", ["v4-7", "v5p-6", "v6e-3", "v3-8"])
def test_unknown_topology_is_a_user_error(capsys, topology):
    assert cli.main(["compile", *TINY, f"--topology={topology}"]) == 1
    err = capsys.readouterr().err
    assert "v4-8" in err and "v5litepod-8" in err and "v5p-8" in err and "v6e-4" in err


def test_mfu_outside_0_1_is_a_user_error(capsys):
    assert cli.main(["compile", *TINY, "--topology=v4-8", "--mfu=1.5"]) == 1
    assert "--mfu=1.5" in capsys.readouterr().err


@pytest.mark.parametrize("accelerator,chips,topology,bounds", [
    ("v4-8", 4, "v4:2x2x1", (2, 2, 1)), ("v4-128", 64, "v4:4x4x4", (2, 2, 1)),
    ("v5litepod-256", 256, "v5e:16x16", (2, 4, 1)), ("v5e-8", 8, "v5e:2x4", (2, 4, 1)),
    ("v5p-8", 4, "v5p:2x2x1", (2, 2, 1)), ("v5p-8192", 4096, "v5p:16x16x16", (2, 2, 1)),
    ("v6e-1", 1, "v6e:1x1", (1, 1, 1)), ("v6e-4", 4, "v6e:2x2", (2, 2, 1)), ("v6e-256", 256, "v6e:16x16", (2, 4, 1))])
def test_accelerator_types_map_to_topologies(accelerator, chips, topology, bounds):
    tpu = tpu_chips.parse_accelerator(accelerator)
    assert (tpu.chips, tpu.topology_name, tpu.host_bounds()) == (chips, topology, bounds)


# ---------------------------------------------------------------- FLOPs


def _dot_flops(jaxpr) -> int:
    """2 × multiply-adds of every dot_general of a jaxpr, nested jaxprs included (a scan's times its length)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
        repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(sub, (jax_core.ClosedJaxpr, jax_core.Jaxpr)):
                    total += repeat * _dot_flops(getattr(sub, "jaxpr", sub))
    return total


def test_model_flops_literal():
    """The formula on the demo's tiny config and on a ReLU one with every loss term, by hand."""
    tiny = dual_encoder.ModelConfig(t5.T5Config(vocab_size=4096, d_model=64, num_layers=2, num_heads=4, d_kv=16,
                                                d_ff=128), "ade_spl", 128)
    query = 64 * (2 * (2 * 40960 * 32 + 4 * 4 * 16 * 32**2) + 2 * 64 * 128)  # 4·64·64 + 3·64·128 = 40960
    doc = 64 * (2 * (2 * 40960 * 128 + 4 * 4 * 16 * 128**2) + 2 * 64 * 128)
    loss = 3 * (2 * 64 * 64 * 128 * 2) + 2 * 64 * 64 * 128  # q·p and SamToNe's q·q with gradients; p·q metrics
    assert 3 * (query + doc) + loss == 6_758_072_320 and doc == 1_880_096_768
    assert flops.train_step_flops(tiny, 64, {"query": 32, "doc": 128}, 0, LossConfig(same_tower="query")) == (
        6_758_072_320)
    assert flops.encode_step_flops(tiny, 64, 128) == 1_880_096_768

    relu = dual_encoder.ModelConfig(t5.T5Config(d_model=8, num_layers=3, num_heads=2, d_kv=4, d_ff=16,
                                                feed_forward="relu"), "sde", 6)
    layer = 4 * 8 * 2 * 4 + 2 * 8 * 16  # 512
    query = 10 * (3 * (2 * layer * 5 + 4 * 2 * 4 * 5**2) + 2 * 8 * 6)
    docs = 30 * (3 * (2 * layer * 7 + 4 * 2 * 4 * 7**2) + 2 * 8 * 6)  # 10 positives + 2 negatives each
    loss = 3 * 2 * 10 * 6 * (30 + 10 + 30 + 10)  # q·pool, q·q, p·pool, p·q, all with gradients
    config = LossConfig(same_tower="both", bidirectional=True)
    assert flops.train_step_flops(relu, 10, {"query": 5, "doc": 7}, 2, config) == 3 * (query + docs) + loss


@pytest.mark.parametrize("settings,num_negatives", [([], 0), (["T5Config.scan_layers = True",
                                                               "T5Config.feed_forward = 'relu'",
                                                               "LossConfig.same_tower = 'both'",
                                                               "LossConfig.bidirectional = True"], 2)])
def test_model_flops_equal_the_traced_steps_matmuls(settings, num_negatives):
    """Independent count: every dot_general of the train step `train` traces (and of the encode step)."""
    parse_gin(["runs/demo_cpu.gin"], ["MODEL_DIR = None", *settings], [])
    arguments = aot.configured_train_arguments()
    mesh = partitioning.make_mesh((1, 1), devices=jax.devices()[:1])
    builder = trainer.build_step(mesh=mesh, **arguments)
    lengths = aot.feature_lengths()
    batch = aot.abstract_batch(arguments["batch_size"], lengths, mesh, num_negatives)
    with jax.set_mesh(mesh):
        traced = _dot_flops(jax.make_jaxpr(builder.update)(builder.abstract_state, batch).jaxpr)
    counted = flops.train_step_flops(arguments["model_config"], arguments["batch_size"], lengths, num_negatives,
                                     arguments["loss"])
    # The similarity metrics add two dot products of summed embeddings, 2·embed_dim FLOPs each.
    assert traced - counted == 2 * 2 * arguments["model_config"].embed_dim

    model = arguments["model_config"].build()
    params = meta.unbox(checkpoints.boxed_param_shapes(arguments["model_config"]))
    tokens = jax.ShapeDtypeStruct((16, lengths["doc"]), "int32")
    encode = lambda p, t: model.apply({"params": p}, t, "doc", method=dual_encoder.DualEncoder.encode)  # noqa: E731
    assert _dot_flops(jax.make_jaxpr(encode)(params, tokens).jaxpr) == flops.encode_step_flops(
        arguments["model_config"], 16, lengths["doc"])


@pytest.mark.parametrize("case", ["train v4-8", "train v5litepod-8 fsdp", "encode v4-8"])
def test_model_flops_near_xla_and_roofline(reports, case):
    """XLA's per-device cost analysis × devices counts elementwise work too, but is of the same order."""
    report = reports[case]
    assert 0.5 <= report["xla_flops_per_device"] * report["num_devices"] / report["model_flops"] <= 2
    assert report["xla_flops"] == report["xla_flops_per_device"] * report["num_devices"]
    peak = report["num_devices"] * report["peak_flops_per_chip"]
    assert report["step_seconds_at_peak"] == pytest.approx(report["model_flops"] / peak)
    assert report["mfu"] == 0.5 and report["step_seconds_at_mfu"] == pytest.approx(2 * report["step_seconds_at_peak"])
    assert report["examples_per_second_at_mfu"] == pytest.approx(report["batch_size"] / report["step_seconds_at_mfu"])


# ---------------------------------------------------------------- same code path as the CPU runs


def _shardings(lowered):
    """The mesh axes and every sharding annotation (Shardy's `<@mesh, [...]>`) of the lowered StableHLO."""
    text = lowered.as_text()
    return re.findall(r"sdy\.mesh @\w+ = <\[[^\]]*\]", text) + re.findall(r"<@\w+, \[[^>]*\]>", text)


def _cpu_and_tpu_meshes():
    """A 4x2 mesh of the 8 CPU devices and one of a v5litepod-8's devices."""
    tpu = tpu_chips.topology_devices(tpu_chips.parse_accelerator("v5litepod-8"))
    return [partitioning.make_mesh((4, 2), devices=devices) for devices in (jax.devices()[:8], tpu)]


def test_tpu_step_is_the_step_train_runs_on_cpu():
    """Same code path: the CPU mesh's and the TPU topology's lowered train steps carry the same shardings."""
    parse_gin(["runs/demo_cpu.gin"], ["MODEL_DIR = None", "standard_logical_axis_rules.fsdp = True"], [])
    arguments = aot.configured_train_arguments()
    lowered = []
    for mesh in _cpu_and_tpu_meshes():
        builder = trainer.build_step(mesh=mesh, **arguments)
        lowered.append(builder.lower(aot.abstract_batch(arguments["batch_size"], aot.feature_lengths(), mesh)))
    cpu, tpu = (_shardings(x) for x in lowered)
    assert len(cpu) > 10 and cpu == tpu
    assert any('"data"' in s for s in cpu[1:]) and any('"model"' in s for s in cpu[1:])


def test_tpu_encode_step_is_the_step_encode_runs_on_cpu():
    """The encode step `compile --step=encode` lowers carries the shardings of the one TextEncoder runs."""
    parse_gin(["runs/demo_cpu.gin"], ["MODEL_DIR = None", "standard_logical_axis_rules.fsdp = True"], [])
    model_config = aot.configured_train_arguments()["model_config"]
    cpu_mesh, tpu_mesh = _cpu_and_tpu_meshes()
    pair = np.ones((1, 2), np.int32)
    params = jax.jit(lambda key: meta.unbox(model_config.build().init(key, pair, pair)["params"]),
                     out_shardings=encoding.param_shardings(model_config, cpu_mesh))(jax.random.key(0))
    encoder = encoding.TextEncoder(model_config, params, None, cpu_mesh)
    # What encode runs: the encoder's own step, traced on its first real batch.
    ones = np.ones((16, 24), np.int32)
    assert encoder.embed_tokens(ones, "doc").shape == (16, model_config.embed_dim)
    tokens = jax.make_array_from_callback(ones.shape, partitioning.batch_sharding(cpu_mesh), lambda index: ones[index])
    cpu = _shardings(encoder.step.lower(params, tokens, "doc"))
    step, abstract_params, abstract_tokens = aot.encode_arguments(model_config, tpu_mesh, 16, 24)
    tpu = _shardings(step.lower(abstract_params, abstract_tokens, "doc"))
    assert len(cpu) > 10 and cpu == tpu
    assert any('"data"' in s for s in cpu[1:]) and any('"model"' in s for s in cpu[1:])
