"""Meshes, the logical-axis rules and the shardings they give the model's params."""

import jax
import numpy as np
import pytest
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
