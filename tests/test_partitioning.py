"""Meshes, the logical-axis rules and the shardings they give the model's params."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gtr_jax.train import checkpoints, partitioning
from gtr_jax.model import dual_encoder, t5
from gtr_jax.errors import UserError

CONFIG = dual_encoder.ModelConfig(t5.T5Config(vocab_size=64, d_model=16, num_layers=2, num_heads=2, d_kv=8, d_ff=24),
                                  "ade_spl", 8)


def specs(fsdp, scan=False):
    config = CONFIG
    if scan:
        config = dual_encoder.ModelConfig(t5.T5Config(**{**CONFIG.encoder.to_dict(), "scan_layers": True}), "ade_spl", 8)
    mesh = partitioning.make_mesh((4, 2))
    shardings = partitioning.param_shardings(checkpoints.boxed_param_shapes(config), mesh,
                                             partitioning.standard_logical_axis_rules(fsdp=fsdp))
    return jax.tree.map(lambda s: s.spec, shardings)


def test_t5x_default_rules_shard_model_dims_over_model():
    spec = specs(fsdp=False)
    encoder = spec["query_encoder"]
    assert encoder["token_embedder"] == P("model", None)
    assert encoder["layers_0"]["attention"]["query"]["kernel"] == P(None, "model")
    assert encoder["layers_0"]["attention"]["out"]["kernel"] == P("model", None)
    assert encoder["layers_1"]["mlp"]["wi_0"]["kernel"] == P(None, "model")
    assert encoder["relpos_bias"] == P(None, "model")
    assert encoder["final_norm"]["scale"] == P(None)
    assert spec["projection"]["dense"]["kernel"] == P(None, None)


def test_fsdp_rules_also_shard_embed_over_data():
    spec = specs(fsdp=True)
    encoder = spec["doc_encoder"]
    assert encoder["token_embedder"] == P("model", "data")
    assert encoder["layers_0"]["mlp"]["wo"]["kernel"] == P("model", "data")
    assert encoder["final_norm"]["scale"] == P("data")
    assert spec["projection"]["dense"]["kernel"] == P("data", None)


def test_scanned_layers_keep_the_layer_axis_whole():
    spec = specs(fsdp=False, scan=True)
    assert spec["query_encoder"]["layers"]["mlp"]["wi_1"]["kernel"] == P(None, None, "model")


def test_mesh_shapes():
    assert dict(partitioning.make_mesh((-1, 2)).shape) == {"data": 4, "model": 2}
    assert dict(partitioning.make_mesh((2, 1), num_devices=2).shape) == {"data": 2, "model": 1}
    with pytest.raises(UserError, match="does not fit 8 devices"):
        partitioning.make_mesh((3, 2))
    with pytest.raises(UserError, match="at most one -1"):
        partitioning.make_mesh((-1, -1))


def test_batch_size_must_split_over_data():
    partitioning.check_divisible(16, partitioning.make_mesh((8, 1)))
    with pytest.raises(UserError, match="BATCH_SIZE 12 must be divisible by the data-parallel size 8"):
        partitioning.check_divisible(12, partitioning.make_mesh((8, 1)))


def test_global_batch_shards_rows_over_data():
    mesh = partitioning.make_mesh((4, 2))
    batch = {"doc_tokens": np.arange(8 * 5, dtype=np.int32).reshape(8, 5), "doc_ids": np.arange(8, dtype=np.int32)}
    arrays = partitioning.global_batch(batch, mesh)
    assert arrays["doc_tokens"].sharding.spec == P("data")
    assert {s.data.shape for s in arrays["doc_tokens"].addressable_shards} == {(2, 5)}
    np.testing.assert_array_equal(np.asarray(arrays["doc_tokens"]), batch["doc_tokens"])


# The table as it was when activations shared the weights' logical names: `batch` had to
# come before `embed` for an activation [batch, length, embed] to keep `data` on its batch
# under fsdp. Kept here literally, with those names, as the reference of the new table.
OLD_ACTIVATION_NAMES = {"ACTIVATION_BATCH": "batch", "ACTIVATION_LENGTH": "length", "ACTIVATION_EMBED": "embed",
                        "ACTIVATION_HEADS": "heads", "ACTIVATION_KV": "kv", "ACTIVATION_MLP": "mlp"}


def old_rules(fsdp):
    """`standard_logical_axis_rules(fsdp)` before activations had names of their own."""
    return (("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"), ("joined_kv", "model"),
            ("kv", None), ("length", None), ("relpos_buckets", None), ("projection", None), ("layers", None),
            ("embed", "data" if fsdp else None))


def without_metadata(hlo: str) -> str:
    """HLO text without its source metadata (op names, stack frames), which depend on the call site."""
    lines = [line for line in hlo.splitlines() if not re.match(r'\d+ [{"]', line)]  # the stack-frame tables
    return re.sub(r", metadata=\{[^}]*\}", "", "\n".join(lines))


def compiled_encoder_step(rules, scan):
    """(HLO text without metadata, output sharding, count of sharding constraints) of the
    compiled forward and backward of a tiny T5 encoder with dropout on, params placed by
    `rules` and the activation constraints in force, on a (4, 2) mesh."""
    config = t5.T5Config(**{**CONFIG.encoder.to_dict(), "scan_layers": scan})
    model = t5.T5Encoder(config)
    mesh = partitioning.make_mesh((4, 2))
    tokens = jax.ShapeDtypeStruct((8, 6), np.int32, sharding=partitioning.batch_sharding(mesh))
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.ones((8, 6), np.int32)))["params"]
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), meta.unbox(boxed),
                          partitioning.param_shardings(boxed, mesh, rules))

    def step(params, tokens):
        def loss(params):
            hidden = model.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(1)})
            return jnp.mean(hidden**2), hidden

        (_, hidden), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return hidden, grads

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        lowered = jax.jit(step).lower(params, tokens)  # a fresh function: no trace cached under other rules
    compiled = lowered.compile()
    constraints = lowered.as_text().count("sharding_constraint")
    return without_metadata(compiled.as_text()), compiled.output_shardings[0], constraints


def test_each_logical_name_has_one_rule():
    for fsdp in (False, True):
        names = [name for name, _ in partitioning.standard_logical_axis_rules(fsdp=fsdp)]
        assert len(names) == len(set(names))


@pytest.mark.parametrize("fsdp", [False, True])
def test_param_shardings_are_those_of_the_old_table(fsdp):
    mesh = partitioning.make_mesh((4, 2))
    for scan in (False, True):
        config = dual_encoder.ModelConfig(t5.T5Config(**{**CONFIG.encoder.to_dict(), "scan_layers": scan}), "ade", 8)
        boxed = checkpoints.boxed_param_shapes(config)
        new = partitioning.param_shardings(boxed, mesh, partitioning.standard_logical_axis_rules(fsdp=fsdp))
        old = partitioning.param_shardings(boxed, mesh, old_rules(fsdp))
        assert jax.tree.map(lambda s: s.spec, new) == jax.tree.map(lambda s: s.spec, old)


@pytest.mark.parametrize("fsdp", [False, True])
@pytest.mark.parametrize("scan", [False, True])
def test_encoder_compiles_to_the_old_shardings(fsdp, scan, monkeypatch):
    rules = partitioning.standard_logical_axis_rules(fsdp=fsdp)
    program, output, constraints = compiled_encoder_step(rules, scan)
    assert constraints > 0  # the activation constraints were in force
    mesh = partitioning.make_mesh((4, 2))
    # The encoder output keeps its batch over `data`, also under fsdp (where weights' embed is on `data`).
    assert output.is_equivalent_to(NamedSharding(mesh, P("data", None, None)), 3)
    # Any rule order gives the same program.
    assert compiled_encoder_step(tuple(reversed(rules)), scan)[0] == program

    for constant, name in OLD_ACTIVATION_NAMES.items():
        monkeypatch.setattr(t5, constant, name)
    old_program, old_output, old_constraints = compiled_encoder_step(old_rules(fsdp), scan)
    assert (old_program, old_constraints) == (program, constraints)
    assert old_output.is_equivalent_to(output, 3)
