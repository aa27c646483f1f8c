"""The flax T5 encoder against Hugging Face's PyTorch T5EncoderModel."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax.core import meta
from transformers.models.t5.modeling_t5 import T5Attention

import hf_models
from gtr_jax.model import dual_encoder, t5
from gtr_jax.interop import hf_weights

CASES = {
    "gated-gelu": dict(feed_forward="gated-gelu"),
    "relu": dict(feed_forward="relu"),
    # num_heads * d_kv = 96 != d_model = 64, like GTR-XL/XXL.
    "wide-heads": dict(feed_forward="relu", num_heads=6, d_kv=16),
}


def padded_tokens(rng, vocab_size, lengths, width):
    tokens = np.zeros((len(lengths), width), np.int32)
    for row, length in enumerate(lengths):
        tokens[row, : length - 1] = rng.integers(2, vocab_size, length - 1)
        tokens[row, length - 1] = 1  # EOS
    return tokens


def hf_reference(tmp_path, case, seq2seq=False):
    """(our T5Config, our params, HF model) for a random HF T5 written as safetensors."""
    model = hf_models.random_t5(hf_models.t5_config(**CASES[case]), seed=1, seq2seq=seq2seq)
    model.save_pretrained(tmp_path, safe_serialization=True)
    config = hf_weights.t5_config_from_hf(str(tmp_path / "config.json"))
    return config, hf_weights.encoder_params_from_hf(str(tmp_path), config), model


def hf_hidden(model, tokens):
    encoder = model.encoder if hasattr(model, "decoder") else model
    with torch.no_grad():
        out = encoder(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(tokens != 0))
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_hidden_states_and_mean_pool_match_hf(tmp_path, case):
    config, params, model = hf_reference(tmp_path, case)
    tokens = padded_tokens(np.random.default_rng(0), config.vocab_size, [40, 23, 7, 1], 40)
    expected = hf_hidden(model, tokens)
    hidden = np.asarray(t5.T5Encoder(config).apply({"params": params}, tokens))
    np.testing.assert_allclose(hidden, expected, atol=1e-5, rtol=0)

    mask = (tokens != 0)[..., None]
    expected_pool = (expected * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(np.asarray(dual_encoder.mean_pool(hidden, tokens)), expected_pool, atol=1e-5, rtol=0)


def test_padding_does_not_change_real_positions(tmp_path):
    config, params, _ = hf_reference(tmp_path, "gated-gelu")
    tokens = padded_tokens(np.random.default_rng(1), config.vocab_size, [12], 12)
    wide = np.pad(tokens, ((0, 0), (0, 20)))
    encoder = t5.T5Encoder(config)
    short = encoder.apply({"params": params}, tokens)
    long = encoder.apply({"params": params}, wide)[:, :12]
    np.testing.assert_allclose(np.asarray(short), np.asarray(long), atol=1e-5, rtol=0)


def test_encoder_of_seq2seq_checkpoint(tmp_path):
    config, params, model = hf_reference(tmp_path, "gated-gelu", seq2seq=True)
    tokens = padded_tokens(np.random.default_rng(2), config.vocab_size, [9, 30], 30)
    hidden = t5.T5Encoder(config).apply({"params": params}, tokens)
    np.testing.assert_allclose(np.asarray(hidden), hf_hidden(model, tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 24), (8, 10)])
def test_relative_position_buckets_match_hf(num_buckets, max_distance):
    length = 300
    relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    expected = T5Attention._relative_position_bucket(relative, True, num_buckets, max_distance).numpy()
    np.testing.assert_array_equal(t5.relative_position_buckets(length, length, num_buckets, max_distance), expected)


@pytest.mark.parametrize("scan,remat", [(True, False), (False, True), (True, True)])
def test_scan_and_remat_give_the_same_outputs_and_gradients(tmp_path, scan, remat):
    config, params, _ = hf_reference(tmp_path, "gated-gelu")
    variant = t5.T5Config(**{**config.to_dict(), "scan_layers": scan, "remat": remat})
    variant_params = t5.stack_layers(params, config.num_layers) if scan else params
    tokens = padded_tokens(np.random.default_rng(3), config.vocab_size, [16, 5], 16)

    def loss(module, p):
        return jnp.sum(jnp.sin(module.apply({"params": p}, tokens)))

    base_loss, base_grads = jax.value_and_grad(lambda p: loss(t5.T5Encoder(config), p))(params)
    variant_loss, variant_grads = jax.value_and_grad(lambda p: loss(t5.T5Encoder(variant), p))(variant_params)
    np.testing.assert_allclose(variant_loss, base_loss, rtol=1e-6)
    if scan:
        variant_grads = t5.unstack_layers(variant_grads, config.num_layers)
    # Summation order differs between the scanned and unrolled programs: compare each
    # gradient to float32 round-off of its own scale.
    for got, want in zip(jax.tree.leaves(variant_grads), jax.tree.leaves(base_grads)):
        np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(want).max(), rtol=0)


def test_stack_and_unstack_are_inverse(tmp_path):
    config, params, _ = hf_reference(tmp_path, "relu")
    round_trip = t5.unstack_layers(t5.stack_layers(params, config.num_layers), config.num_layers)
    jax.tree.map(np.testing.assert_array_equal, round_trip, params)


def test_every_parameter_has_logical_axes_of_its_rank():
    config = t5.T5Config(vocab_size=50, d_model=16, num_layers=2, num_heads=2, d_kv=4, d_ff=24)
    boxed = t5.T5Encoder(config).init(jax.random.key(0), np.ones((1, 4), np.int32))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, meta.Partitioned))
    assert leaves and all(isinstance(x, meta.Partitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= {"vocab", "embed", "mlp", "joined_kv", "heads", "relpos_buckets"}
    assert boxed["layers_0"]["attention"]["query"]["kernel"].names == ("embed", "joined_kv")
    assert boxed["layers_1"]["mlp"]["wo"]["kernel"].names == ("mlp", "embed")

    scanned = t5.T5Config(**{**config.to_dict(), "scan_layers": True})
    boxed = t5.T5Encoder(scanned).init(jax.random.key(0), np.ones((1, 4), np.int32))["params"]
    assert boxed["layers"]["mlp"]["wi_0"]["kernel"].names == ("layers", "embed", "mlp")


def test_bfloat16_compute_keeps_float32_params_and_stays_close(tmp_path):
    config, params, _ = hf_reference(tmp_path, "gated-gelu")
    bf16 = t5.T5Config(**{**config.to_dict(), "dtype": "bfloat16"})
    tokens = padded_tokens(np.random.default_rng(4), config.vocab_size, [20, 8], 20)
    full = np.asarray(t5.T5Encoder(config).apply({"params": params}, tokens))
    half = t5.T5Encoder(bf16).apply({"params": params}, tokens)
    assert half.dtype == jnp.float32  # the residual stream and final norm stay float32
    init = t5.T5Encoder(bf16).init(jax.random.key(0), tokens)["params"]
    assert {x.dtype for x in jax.tree.leaves(meta.unbox(init))} == {jnp.dtype("float32")}
    assert np.abs(np.asarray(half) - full).max() < 0.1 * np.abs(full).max()
    assert not np.allclose(np.asarray(half), full, atol=1e-6)  # bf16 really was used


def _primitives_with_outputs_of(dtype, jaxpr) -> set[str]:
    """Names of the primitives in `jaxpr` (and the jaxprs nested in it) with a `dtype` output."""
    found = set()
    for eqn in jaxpr.eqns:
        if any(getattr(var.aval, "dtype", None) == dtype for var in eqn.outvars):
            found.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= _primitives_with_outputs_of(dtype, sub)
    return found


@pytest.mark.parametrize("feed_forward", ["gated-gelu", "relu"])
def test_bfloat16_compute_does_its_elementwise_math_in_float32(feed_forward):
    """bfloat16 values only move (casts, transposes, reshapes) and meet in matmuls: the
    feed-forward activation, dropout, softmax, norms and residual adds, and their
    gradients, run in float32 (XLA CPU would round after every bfloat16 elementwise op)."""
    config = t5.T5Config(vocab_size=64, d_model=32, num_layers=2, num_heads=2, d_kv=16, d_ff=48,
                         feed_forward=feed_forward, dtype="bfloat16")
    tokens = padded_tokens(np.random.default_rng(6), config.vocab_size, [9, 5], 9)
    encoder = t5.T5Encoder(config)
    params = encoder.init(jax.random.key(0), tokens)["params"]

    def loss(params):
        hidden = encoder.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(1)})
        return jnp.sum(hidden**2)

    closed = jax.make_jaxpr(jax.value_and_grad(loss))(params)
    producers = _primitives_with_outputs_of(jnp.dtype("bfloat16"), closed.jaxpr)
    assert "convert_element_type" in producers  # the matmul operands really are bfloat16
    assert producers <= {"convert_element_type", "transpose", "reshape", "optimization_barrier"}, producers


def test_dropout_is_active_only_when_not_deterministic(tmp_path):
    config, params, _ = hf_reference(tmp_path, "relu")
    tokens = padded_tokens(np.random.default_rng(5), config.vocab_size, [10], 10)
    encoder = t5.T5Encoder(config)
    eval_a = encoder.apply({"params": params}, tokens)
    eval_b = encoder.apply({"params": params}, tokens, deterministic=True)
    train = encoder.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    assert not np.allclose(np.asarray(train), np.asarray(eval_a))


def test_config_rejects_unknown_feed_forward_and_dtype():
    with pytest.raises(ValueError, match="feed_forward"):
        t5.T5Config(feed_forward="swiglu")
    with pytest.raises(TypeError):
        t5.T5Config(dtype="float17")
    with pytest.raises(ValueError, match="unknown"):
        t5.T5Config.from_dict({"d_modle": 3})
