"""Tower layouts, pooling, projection and normalization of the dual encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from gtr_jax.model import dual_encoder, t5

CONFIG = t5.T5Config(vocab_size=64, d_model=16, num_layers=2, num_heads=2, d_kv=8, d_ff=24, dropout_rate=0.0)


def init(tower, embed_dim=12):
    model = dual_encoder.DualEncoder(CONFIG, tower, embed_dim)
    tokens = np.array([[5, 6, 1, 0], [7, 1, 0, 0]], np.int32)
    return model, meta.unbox(model.init(jax.random.key(0), tokens, tokens)["params"]), tokens


def count_params(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def test_sde_shares_one_encoder_and_one_projection():
    model, params, tokens = init("sde")
    assert set(params) == {"encoder", "projection"}
    q = model.apply({"params": params}, tokens, method=model.encode_queries)
    d = model.apply({"params": params}, tokens, method=model.encode_docs)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(d))


def test_ade_has_two_encoders_and_two_projections():
    _, params, _ = init("ade")
    assert set(params) == {"query_encoder", "doc_encoder", "query_projection", "doc_projection"}


def test_ade_spl_has_two_encoders_and_exactly_one_projection():
    model, params, tokens = init("ade_spl")
    assert set(params) == {"query_encoder", "doc_encoder", "projection"}
    projections = [k for k in params if "projection" in k]
    assert projections == ["projection"]
    assert count_params(params) == 2 * count_params(params["query_encoder"]) + count_params(params["projection"])
    # The towers really are separate: changing the doc encoder leaves queries alone.
    changed = {**params, "doc_encoder": jax.tree.map(lambda x: x * 1.5, params["doc_encoder"])}
    q0 = model.apply({"params": params}, tokens, method=model.encode_queries)
    q1 = model.apply({"params": changed}, tokens, method=model.encode_queries)
    d0 = model.apply({"params": params}, tokens, method=model.encode_docs)
    d1 = model.apply({"params": changed}, tokens, method=model.encode_docs)
    np.testing.assert_array_equal(np.asarray(q0), np.asarray(q1))
    assert not np.allclose(np.asarray(d0), np.asarray(d1))


@pytest.mark.parametrize("tower", dual_encoder.TOWERS)
def test_embeddings_are_unit_norm_and_equal_the_explicit_formula(tower):
    model, params, tokens = init(tower)
    q, d, negatives = model.apply({"params": params}, tokens, tokens[::-1])
    assert negatives is None and q.shape == (2, 12) and q.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(q), axis=-1), 1.0, rtol=1e-6)

    encoder = params["encoder"] if tower == "sde" else params["query_encoder"]
    kernel = (params["query_projection"] if tower == "ade" else params["projection"])["dense"]["kernel"]
    hidden = np.asarray(t5.T5Encoder(CONFIG).apply({"params": encoder}, tokens), np.float64)
    mask = (tokens != 0)[..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    projected = pooled @ np.asarray(kernel, np.float64)
    expected = projected / np.linalg.norm(projected, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(q), expected, atol=1e-6)


def test_hard_negatives_are_encoded_by_the_doc_tower():
    model, params, tokens = init("ade")
    negatives = np.stack([tokens, tokens[::-1], tokens], axis=1)  # [batch 2, 3 negatives, length]
    _, _, negative_emb = model.apply({"params": params}, tokens, tokens, negatives)
    assert negative_emb.shape == (2, 3, 12)
    docs = model.apply({"params": params}, tokens, method=model.encode_docs)
    np.testing.assert_allclose(np.asarray(negative_emb[:, 0]), np.asarray(docs), atol=1e-6)
    np.testing.assert_allclose(np.asarray(negative_emb[0, 1]), np.asarray(docs[1]), atol=1e-6)


def test_mean_pool_ignores_padding_and_survives_empty_rows():
    hidden = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    tokens = np.array([[4, 1, 0], [0, 0, 0]])
    pooled = np.asarray(dual_encoder.mean_pool(hidden, tokens))
    np.testing.assert_allclose(pooled[0], [1.0, 2.0])
    np.testing.assert_array_equal(pooled[1], [0.0, 0.0])


def test_projection_is_float32_under_bfloat16_compute():
    config = t5.T5Config(**{**CONFIG.to_dict(), "dtype": "bfloat16"})
    model = dual_encoder.DualEncoder(config, "sde", 12)
    tokens = np.array([[5, 6, 1, 0]], np.int32)
    params = model.init(jax.random.key(0), tokens, tokens)["params"]
    q = model.apply({"params": params}, tokens, method=model.encode_queries)
    assert q.dtype == jnp.float32
    assert params["projection"]["dense"]["kernel"].names == ("embed", "projection")


def test_model_config_round_trips_through_json_and_rejects_bad_towers():
    config = dual_encoder.ModelConfig(CONFIG, "ade_spl", 32, 48, 200)
    assert dual_encoder.ModelConfig.from_json(config.to_json()) == config
    assert config.max_length("query") == 48 and config.max_length("doc") == 200
    with pytest.raises(ValueError, match="tower"):
        dual_encoder.ModelConfig(CONFIG, "three_towers")
