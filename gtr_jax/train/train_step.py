"""Train state and the jitted update: the dual encoder, the contrastive loss, the optimizer.

Two ways to get the gradient of the contrastive loss over the global batch:
  plain      encode the whole batch with gradients (activation memory ∝ batch);
  GradCache  (Gao et al. 2021) encode chunks without gradients, take d loss / d
             embeddings on the whole batch, then re-encode each chunk and pull that
             cotangent back through it (activation memory ∝ chunk). Same gradient.
Microbatching is not offered: averaging per-microbatch losses would shrink every
query's negative pool to its microbatch, which changes the loss.
"""

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from gtr_jax import losses
from gtr_jax.train import partitioning
from gtr_jax.train.partitioning import DATA

FEATURES = ("query_tokens", "doc_tokens", "negative_tokens")
# Batch feature -> contrastive_loss argument, for duplicate masking.
ID_FEATURES = {"query_ids": "query_ids", "doc_ids": "doc_ids", "negative_ids": "hard_neg_ids"}


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. `temperature` is {} or {"log_temperature": scalar} when learnt."""

    step: jax.Array
    params: Any
    temperature: Any
    opt_state: Any


class Accumulator(flax.struct.PyTreeNode):
    """Sums of step metrics between two log points, kept on device so that steps never sync.

    `first_nonfinite_step` is -1 while every loss has been finite.
    """

    sums: dict
    count: jax.Array
    first_nonfinite_step: jax.Array

    @classmethod
    def zeros(cls, metric_names):
        """An empty accumulator for the given metric names."""
        # numpy, not jnp: placing host zeros compiles nothing.
        return cls({k: np.zeros((), np.float32) for k in metric_names}, np.zeros((), np.int32), np.full((), -1, np.int32))

    def add(self, step, metrics):
        """Add one step's metrics; remember the first step whose loss was not finite."""
        bad = ~jnp.isfinite(metrics["loss"])
        first = jnp.where((self.first_nonfinite_step < 0) & bad, step, self.first_nonfinite_step)
        sums = {k: self.sums[k] + metrics[k].astype(jnp.float32) for k in self.sums}
        return Accumulator(sums, self.count + 1, first)


def temperature_value(temperature_params, fixed_temperature: float):
    """τ: the fixed value, or the clipped exp of the learnt log-temperature."""
    if "log_temperature" in temperature_params:
        return losses.temperature_from_log(temperature_params["log_temperature"])
    return fixed_temperature


def initial_temperature(learn: bool, temperature: float) -> dict:
    """Trainable temperature params: {} for a fixed τ, else log τ initialized at `temperature`."""
    return {"log_temperature": jnp.log(jnp.float32(temperature))} if learn else {}


def _loss_inputs(batch):
    return {arg: batch[feature] for feature, arg in ID_FEATURES.items() if feature in batch}


def make_update(model, tx: optax.GradientTransformation, mesh, *, loss: losses.LossConfig | None = None,
                temperature: float, dropout_seed: int, grad_cache_chunk_size: int | None = None,
                logical_axis_rules=None):
    """`update(state, batch) -> (state, metrics)`, one optimizer step, to be jitted by the caller.

    `loss` gives the contrastive loss's options (None: `contrastive_loss`'s defaults, the
    in-batch softmax). `grad_cache_chunk_size` is the number of examples *per data shard*
    in each GradCache chunk; None encodes the whole batch at once. `logical_axis_rules`
    (None: `partitioning.standard_logical_axis_rules(fsdp=False)`) turn the model's
    activation constraints into shardings when the caller traces under `jax.set_mesh(mesh)`.
    """
    loss_options = {} if loss is None else loss.options()
    rules = partitioning.standard_logical_axis_rules(fsdp=False) if logical_axis_rules is None else logical_axis_rules

    def encode(params, batch, rng):
        with nn.logical_axis_rules(rules):
            return model.apply(
                {"params": params},
                batch["query_tokens"],
                batch["doc_tokens"],
                batch.get("negative_tokens"),
                deterministic=False,
                rngs={"dropout": rng},
            )

    def contrastive(embeddings, temperature_params, batch):
        query_emb, doc_emb, negative_emb = embeddings
        return losses.sharded_contrastive_loss(
            mesh,
            query_emb,
            doc_emb,
            temperature=temperature_value(temperature_params, temperature),
            axis_name=DATA,
            hard_neg_emb=negative_emb,
            **_loss_inputs(batch),
            **loss_options,
        )

    def plain_gradients(params, temperature_params, batch, rng):
        def loss_fn(params, temperature_params):
            return contrastive(encode(params, batch, rng), temperature_params, batch)

        return jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, temperature_params)

    def grad_cache_gradients(params, temperature_params, batch, rng):
        shards = mesh.shape[DATA]
        inputs = {k: batch[k] for k in FEATURES if k in batch}
        rows = batch["query_tokens"].shape[0] // shards
        if rows % grad_cache_chunk_size:
            raise ValueError(f"grad_cache_chunk_size {grad_cache_chunk_size} must divide the per-shard batch {rows}")
        num_chunks = rows // grad_cache_chunk_size
        chunked = jax.tree.map(functools.partial(_to_chunks, shards, num_chunks, mesh), inputs)
        keys = jax.random.split(rng, num_chunks)

        # Pass 1: embeddings of every chunk, no activations kept.
        embeddings = jax.lax.map(lambda xs: encode(params, xs[0], xs[1]), (chunked, keys))
        embeddings = jax.tree.map(functools.partial(_from_chunks, shards, num_chunks), embeddings)
        (loss, metrics), (embedding_grads, temperature_grads) = jax.value_and_grad(
            contrastive, argnums=(0, 1), has_aux=True
        )(embeddings, temperature_params, batch)

        # Pass 2: re-encode chunk by chunk and pull the embeddings' cotangent back to params.
        chunked_grads = jax.tree.map(functools.partial(_to_chunks, shards, num_chunks, mesh), embedding_grads)

        def accumulate(total, xs):
            chunk, key, cotangent = xs
            _, pullback = jax.vjp(lambda p: encode(p, chunk, key), params)
            return jax.tree.map(jnp.add, total, pullback(cotangent)[0]), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        param_grads, _ = jax.lax.scan(accumulate, zeros, (chunked, keys, chunked_grads))
        return (loss, metrics), (param_grads, temperature_grads)

    gradients = grad_cache_gradients if grad_cache_chunk_size else plain_gradients
    base_key = jax.random.key(dropout_seed)

    def update(state: TrainState, batch):
        rng = jax.random.fold_in(base_key, state.step)
        (loss, metrics), grads = gradients(state.params, state.temperature, batch, rng)
        trainables = (state.params, state.temperature)
        updates, opt_state = tx.update(grads, state.opt_state, trainables)
        params, temperature_params = optax.apply_updates(trainables, updates)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "temperature": jnp.asarray(temperature_value(state.temperature, temperature), jnp.float32),
        }
        return TrainState(state.step + 1, params, temperature_params, opt_state), metrics

    return update


def _to_chunks(shards, num_chunks, mesh, x):
    """[B, ...] -> [num_chunks, B / num_chunks, ...], each chunk taking rows from every data shard.

    Row r of the batch lives on shard r // (B / shards); chunk k takes each shard's k-th
    block of rows, so chunks stay evenly sharded and no rows cross devices.
    """
    rows = x.shape[0] // shards // num_chunks
    x = x.reshape((shards, num_chunks, rows) + x.shape[1:]).swapaxes(0, 1)
    x = x.reshape((num_chunks, shards * rows) + x.shape[3:])
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(None, DATA)))


def _from_chunks(shards, num_chunks, x):
    """Inverse of `_to_chunks`."""
    rows = x.shape[1] // shards
    x = x.reshape((num_chunks, shards, rows) + x.shape[2:]).swapaxes(0, 1)
    return x.reshape((shards * num_chunks * rows,) + x.shape[3:])
