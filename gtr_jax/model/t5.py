"""The T5 encoder (T5.1.1 and T5 v1.0) in flax.linen, with logical axis names for sharding.

Numerics follow Hugging Face's `T5EncoderModel`, which the tests use as the reference:
RMSNorm without bias or mean subtraction, no biases anywhere, unscaled dot-product
attention (T5 folds 1/sqrt(d_kv) into the initialization), a relative position bias
computed once and shared by every layer, and either a gated-GELU (tanh approximation,
HF's `gated-gelu`) or a ReLU feed-forward block.

A from-scratch model draws its parameters as Hugging Face's T5 does (its
`_init_weights`, after Mesh TensorFlow): token embedding N(0, 1); attention query
N(0, (d_model·d_kv)^-1/2), key and value N(0, d_model^-1/2), output N(0, (heads·d_kv)^-1/2);
feed-forward input N(0, d_model^-1/2) and output N(0, d_ff^-1/2); norm scales 1; the
relative position bias as `relpos_bias_initializer` says. t5x's T5.1.1 draws the same
standard deviations, except for the relative position bias.

Parameters are float32. `dtype` is the compute dtype of the matmuls (bfloat16 on TPU, and
on CPUs with AMX or AVX-512 BF16), which accumulate in float32 (`gtr_jax.model.matmul`). All
elementwise math stays in float32: the residual stream, norms, the attention softmax, the
feed-forward activation, dropout and the caller's pooling. Matmuls whose results feed it
return float32; only the operands of matmuls are rounded to `dtype`.
"""

import dataclasses
from typing import Literal

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from gtr_jax.model import matmul

FeedForward = Literal["gated-gelu", "relu"]
RelposBiasInit = Literal["hf", "t5x"]

# Logical axis names, mapped to mesh axes by `partitioning.standard_logical_axis_rules`.
# Parameters use t5x's names; activations have names of their own (as MaxText does), so
# that each name has one rule and no sharding depends on the order of the rules.
EMBED, VOCAB, MLP, JOINED_KV, HEADS, RELPOS = "embed", "vocab", "mlp", "joined_kv", "heads", "relpos_buckets"
ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_EMBED = "activation_batch", "activation_length", "activation_embed"
ACTIVATION_HEADS, ACTIVATION_KV, ACTIVATION_MLP = "activation_heads", "activation_kv", "activation_mlp"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shape and numerics of a T5 encoder; gin files under gin/models/ bind the sizes."""

    vocab_size: int = 32128
    d_model: int = 512
    num_layers: int = 8
    num_heads: int = 6
    d_kv: int = 64
    d_ff: int = 1024
    feed_forward: FeedForward = "gated-gelu"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"
    remat: bool = False
    scan_layers: bool = False
    # How a from-scratch model draws the relative position bias table (imported weights
    # replace it): see `relpos_bias_initializer`.
    relpos_bias_init: RelposBiasInit = "hf"

    def __post_init__(self):
        if self.feed_forward not in ("gated-gelu", "relu"):
            raise ValueError(f"feed_forward must be 'gated-gelu' or 'relu', not {self.feed_forward!r}")
        if self.relpos_bias_init not in ("hf", "t5x"):
            raise ValueError(f"relpos_bias_init must be 'hf' or 't5x', not {self.relpos_bias_init!r}")
        jnp.dtype(self.dtype)  # fail early on a misspelt dtype

    def to_dict(self) -> dict:
        """The fields as a JSON-serializable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "T5Config":
        """Inverse of `to_dict`; unknown keys are an error so that typos do not pass silently."""
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown T5Config fields: {sorted(unknown)}")
        return cls(**fields)


def relpos_bias_initializer(config: T5Config):
    """The initializer of the [buckets, heads] relative position bias table.

    "hf" (the default) draws N(0, d_model^-0.5), as Hugging Face's T5 does
    (`T5PreTrainedModel._init_weights`), the reference our encoder is tested against and
    the peer the quality benchmark trains beside: the bias then starts as small as the
    attention logits' own spread. "t5x" draws t5x's T5.1.1 choice, variance scaling
    (fan_avg, uniform): std sqrt(2 / (buckets + heads)), about 4x larger at d_model 256.
    From scratch, a bias drawn from N(0, 1) (this module's former default, which no
    reference uses) trained worse retrievers than Hugging Face's init (the quality
    benchmark's figures are in docs/performance.md); models fine-tuned from public
    checkpoints never use this init.
    """
    if config.relpos_bias_init == "t5x":
        return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
    return nn.initializers.normal(stddev=config.d_model**-0.5)


def relative_position_buckets(length_q: int, length_k: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional relative-position bucket of every (query, key) pair, shape [length_q, length_k].

    Half the buckets are for keys after the query. Within a half, distances below
    num_buckets/4 get a bucket each and larger ones share log-spaced buckets up to
    max_distance. Computed in numpy float32 at trace time, exactly as HF does in torch
    float32, so that boundary distances fall into the same bucket.
    """
    relative = np.arange(length_k)[None, :] - np.arange(length_q)[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int32) * half
    distance = np.abs(relative)
    max_exact = half // 2
    safe = np.maximum(distance, 1).astype(np.float32)
    log_ratio = np.log(safe / np.float32(max_exact)) / np.float32(np.log(max_distance / max_exact))
    large = max_exact + (log_ratio * np.float32(half - max_exact)).astype(np.int32)
    large = np.minimum(large, half - 1)
    return buckets + np.where(distance < max_exact, distance, large).astype(np.int32)


class RMSNorm(nn.Module):
    """T5's layer norm: scale by the root mean square, no mean subtraction, no bias."""

    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return normed * scale


def _mix32(h):
    """One round of a 32-bit integer hash with low bias (Wellons' lowbias32)."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
    h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def counter_hash_bits(key, shape) -> jax.Array:
    """Uniform uint32 bits of `shape`: a two-round integer hash of each element's index, keyed.

    A function of (key, global index) only, like partitionable threefry, so the bits do not
    depend on how the array is sharded; but a few integer ops per element that fuse into the
    consumer instead of threefry's 20 rounds, which XLA CPU splits into passes over memory
    and which made dropout a large part of a T5-small train step on CPU (figures in
    docs/performance.md). Indices are taken modulo 2**32 and the leading axis's index
    enters the second round, so bits repeat only inside one leading-axis slice of more
    than 2**32 elements.
    """
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    leading = jax.lax.broadcasted_iota(jnp.uint32, shape, 0) if shape else jnp.uint32(0)
    return _mix32(_mix32(index ^ seeds[0]) + (leading ^ seeds[1]))


class Dropout(nn.Module):
    """Inverted dropout (zero with probability `rate`, scale the rest by 1/(1-rate)).

    What `nn.Dropout` computes, with masks from `counter_hash_bits` instead of threefry
    (see there); the keep test compares 32-bit integers, so the rate is exact to 2**-32.
    """

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        threshold = np.uint32(min(round(self.rate * 2**32), 2**32 - 1))
        keep = counter_hash_bits(self.make_rng("dropout"), x.shape) >= threshold
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))


class Dense(nn.Module):
    """A bias-free dense map of the last axis; the kernel carries logical axis names.

    The input is flattened to [tokens, features] around the matmul. XLA CPU lowers the
    weight gradient of a [batch, length, features] contraction (two contracting axes)
    through a transposed copy of the activation gradient, a large part of a T5-small
    train step on CPU (figures in docs/performance.md); the gradient of a 2-D dot needs
    no copy.

    The result is in `out_dtype` (default: the compute dtype `dtype`). Outputs that feed
    elementwise math ask for float32: the matmul accumulates in float32 anyway, and XLA
    CPU emits bfloat16 elementwise ops as float32 ops with a rounding after each one.
    """

    features: int
    axes: tuple[str, str]
    stddev: float
    dtype: jnp.dtype
    out_dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(nn.initializers.normal(stddev=self.stddev), self.axes)
        kernel = self.param("kernel", init, (x.shape[-1], self.features), jnp.float32)
        out_dtype = self.dtype if self.out_dtype is None else self.out_dtype
        y = matmul.matmul(x.reshape(-1, x.shape[-1]), kernel, self.dtype, out_dtype)
        return y.reshape(x.shape[:-1] + (self.features,))


class SelfAttention(nn.Module):
    """Multi-head self-attention without scaling (folded into init) and with an additive bias."""

    config: T5Config

    @nn.compact
    def __call__(self, x, attention_bias, deterministic):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        inner = cfg.num_heads * cfg.d_kv
        # Mesh-TF initialization: T5 does not scale logits, so queries absorb 1/sqrt(d_kv).
        q = Dense(inner, (EMBED, JOINED_KV), (cfg.d_model * cfg.d_kv) ** -0.5, dtype, name="query")(x)
        k = Dense(inner, (EMBED, JOINED_KV), cfg.d_model**-0.5, dtype, name="key")(x)
        v = Dense(inner, (EMBED, JOINED_KV), cfg.d_model**-0.5, dtype, name="value")(x)
        split = lambda t: nn.with_logical_constraint(
            t.reshape(t.shape[:2] + (cfg.num_heads, cfg.d_kv)),
            (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_HEADS, ACTIVATION_KV),
        )
        q, k, v = split(q), split(k), split(v)
        # Heads first: [batch, heads, q_length, d_kv] @ [batch, heads, d_kv, k_length].
        logits = matmul.matmul(jnp.transpose(q, (0, 2, 1, 3)), jnp.transpose(k, (0, 2, 3, 1)), dtype, jnp.float32)
        weights = jax.nn.softmax(logits + attention_bias, axis=-1)
        weights = Dropout(cfg.dropout_rate)(weights, deterministic=deterministic)
        out = matmul.matmul(weights, jnp.transpose(v, (0, 2, 1, 3)), dtype, dtype)
        out = jnp.transpose(out, (0, 2, 1, 3)).reshape(out.shape[0], out.shape[2], inner)
        return Dense(cfg.d_model, (JOINED_KV, EMBED), inner**-0.5, dtype, jnp.float32, name="out")(out)


class FeedForwardBlock(nn.Module):
    """Gated-GELU (T5.1.1) or ReLU (T5 v1.0) feed-forward block without biases."""

    config: T5Config

    @nn.compact
    def __call__(self, x, deterministic):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        std_in, std_out = cfg.d_model**-0.5, cfg.d_ff**-0.5
        if cfg.feed_forward == "gated-gelu":
            gate = Dense(cfg.d_ff, (EMBED, MLP), std_in, dtype, jnp.float32, name="wi_0")(x)
            linear = Dense(cfg.d_ff, (EMBED, MLP), std_in, dtype, jnp.float32, name="wi_1")(x)
            hidden = jax.nn.gelu(gate, approximate=True) * linear
        else:
            hidden = jax.nn.relu(Dense(cfg.d_ff, (EMBED, MLP), std_in, dtype, jnp.float32, name="wi")(x))
        hidden = nn.with_logical_constraint(hidden, (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_MLP))
        hidden = Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
        return Dense(cfg.d_model, (MLP, EMBED), std_out, dtype, jnp.float32, name="wo")(hidden)


class EncoderLayer(nn.Module):
    """Pre-norm residual self-attention then feed-forward."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, attention_bias):
        cfg = self.config
        dropout = Dropout(cfg.dropout_rate)
        h = RMSNorm(cfg.layer_norm_epsilon, name="pre_attention_norm")(x)
        h = SelfAttention(cfg, name="attention")(h, attention_bias, self.deterministic)
        x = x + dropout(h, deterministic=self.deterministic)
        h = RMSNorm(cfg.layer_norm_epsilon, name="pre_mlp_norm")(x)
        h = FeedForwardBlock(cfg, name="mlp")(h, self.deterministic)
        x = x + dropout(h, deterministic=self.deterministic)
        return nn.with_logical_constraint(x, (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_EMBED))


class ScannedLayer(EncoderLayer):
    """`EncoderLayer` with the (carry, output) signature `nn.scan` needs."""

    def __call__(self, x, attention_bias):
        return super().__call__(x, attention_bias), None


class T5Encoder(nn.Module):
    """Token ids [batch, length] (0 = padding) to hidden states [batch, length, d_model], float32.

    With `scan_layers` the layer parameters are stacked on a leading `layers` axis
    (`params['layers']`); otherwise each layer is `params['layers_{i}']`.
    """

    config: T5Config

    @nn.compact
    def __call__(self, tokens, deterministic: bool = True):
        cfg = self.config
        tokens = nn.with_logical_constraint(tokens, (ACTIVATION_BATCH, ACTIVATION_LENGTH))
        embedding = self.param(
            "token_embedder",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), (VOCAB, EMBED)),
            (cfg.vocab_size, cfg.d_model),
        )
        x = jnp.take(embedding, tokens, axis=0)
        x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_EMBED))
        attention_bias = self._attention_bias(tokens)

        layer_cls = ScannedLayer if cfg.scan_layers else EncoderLayer
        if cfg.remat:
            layer_cls = nn.remat(layer_cls, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(cfg, deterministic, name="layers")(x, attention_bias)
        else:
            for i in range(cfg.num_layers):
                x = layer_cls(cfg, deterministic, name=f"layers_{i}")(x, attention_bias)
        x = RMSNorm(cfg.layer_norm_epsilon, name="final_norm")(x)
        return Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    def _attention_bias(self, tokens):
        """Relative position bias [1, heads, L, L] plus -inf-like entries for padded keys, float32."""
        cfg = self.config
        length = tokens.shape[1]
        table = self.param(
            "relpos_bias",
            nn.with_logical_partitioning(relpos_bias_initializer(cfg), (RELPOS, HEADS)),
            (cfg.relative_attention_num_buckets, cfg.num_heads),
        )
        buckets = relative_position_buckets(
            length, length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        position_bias = jnp.transpose(jnp.take(table, buckets, axis=0), (2, 0, 1))[None]
        key_is_padding = (tokens == 0)[:, None, None, :]
        return jnp.where(key_is_padding, jnp.finfo(jnp.float32).min, position_bias)


def _layer_names(num_layers: int) -> list[str]:
    return [f"layers_{i}" for i in range(num_layers)]


def stack_layers(encoder_params: dict, num_layers: int) -> dict:
    """Unscanned encoder params (`layers_{i}`) to the scanned layout (`layers`, stacked on axis 0)."""
    names = _layer_names(num_layers)
    rest = {k: v for k, v in encoder_params.items() if k not in names}
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *(encoder_params[n] for n in names))
    return {**rest, "layers": stacked}


def unstack_layers(encoder_params: dict, num_layers: int) -> dict:
    """Scanned encoder params (`layers` stacked on axis 0) to the per-layer layout."""
    rest = {k: v for k, v in encoder_params.items() if k != "layers"}
    for i, name in enumerate(_layer_names(num_layers)):
        rest[name] = jax.tree.map(lambda x, i=i: x[i], encoder_params["layers"])
    return rest
