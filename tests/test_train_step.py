"""GradCache gives the plain step's gradients, on any mesh, with and without hard negatives."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from gtr_jax import losses
from gtr_jax.model import dual_encoder, t5
from gtr_jax.train import partitioning, train_step

CONFIG = t5.T5Config(vocab_size=50, d_model=16, num_layers=2, num_heads=2, d_kv=8, d_ff=24, dropout_rate=0.0)
BATCH = 16


def make_batch(negatives):
    rng = np.random.default_rng(0)
    batch = {"query_tokens": rng.integers(2, 50, (BATCH, 6)).astype(np.int32),
             "doc_tokens": rng.integers(2, 50, (BATCH, 10)).astype(np.int32)}
    if negatives:
        batch["negative_tokens"] = rng.integers(2, 50, (BATCH, 2, 10)).astype(np.int32)
    return batch


def gradients(model, params, batch, mesh, chunk):
    """The parameter gradients of one step (SGD with rate -1 turns the update into the gradient)."""
    tx = optax.sgd(-1.0)
    state = train_step.TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init((params, {})))
    update = jax.jit(train_step.make_update(model, tx, mesh, temperature=0.05, dropout_seed=0, grad_cache_chunk_size=chunk))
    with jax.set_mesh(mesh):
        new_state, metrics = update(state, jax.device_put(batch, partitioning.batch_sharding(mesh)))
    grads = jax.tree.map(lambda new, old: np.asarray(new) - np.asarray(old), new_state.params, params)
    return grads, float(metrics["loss"])


@pytest.mark.parametrize("negatives", [False, True], ids=["pairs", "hard-negatives"])
def test_grad_cache_equals_the_plain_gradient(negatives):
    model = dual_encoder.DualEncoder(CONFIG, "ade_spl", 8)
    batch = make_batch(negatives)
    params = meta.unbox(model.init(jax.random.key(0), batch["query_tokens"], batch["doc_tokens"]))["params"]
    single = partitioning.make_mesh((1, 1), num_devices=1)
    reference, reference_loss = gradients(model, params, batch, single, None)
    assert max(np.abs(g).max() for g in jax.tree.leaves(reference)) > 1e-3  # a gradient worth comparing
    for shape, chunks in [((1, 1), (1, 4, BATCH)), ((4, 2), (1, 4)), ((8, 1), (1, 2))]:
        mesh = partitioning.make_mesh(shape, num_devices=shape[0] * shape[1])
        for chunk in (None, *chunks):
            grads, loss = gradients(model, params, batch, mesh, chunk)
            assert loss == pytest.approx(reference_loss, abs=1e-5)
            for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
                np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"mesh {shape}, chunk {chunk}")


def test_chunk_size_must_divide_the_per_shard_batch():
    model = dual_encoder.DualEncoder(CONFIG, "sde", 8)
    batch = make_batch(False)
    params = meta.unbox(model.init(jax.random.key(0), batch["query_tokens"], batch["doc_tokens"]))["params"]
    with pytest.raises(ValueError, match="grad_cache_chunk_size 3 must divide the per-shard batch 16"):
        gradients(model, params, batch, partitioning.make_mesh((1, 1), num_devices=1), 3)


@pytest.mark.parametrize("options", [dict(same_tower="both", bidirectional=True), dict(pair_alpha=0.3)],
                         ids=["samtone-both", "pair"])
def test_the_step_uses_the_loss_config(options):
    model = dual_encoder.DualEncoder(CONFIG, "ade_spl", 8)
    batch = make_batch(negatives=True)
    params = meta.unbox(model.init(jax.random.key(0), batch["query_tokens"], batch["doc_tokens"]))["params"]
    # Reference: contrastive_loss on one device, options spelled out, on the step's own embeddings (no dropout).
    embeddings = model.apply({"params": params}, batch["query_tokens"], batch["doc_tokens"], batch["negative_tokens"])
    query_emb, doc_emb, negative_emb = embeddings
    reference, _ = losses.contrastive_loss(query_emb, doc_emb, temperature=0.05, hard_neg_emb=negative_emb, **options)
    default, _ = losses.contrastive_loss(query_emb, doc_emb, temperature=0.05, hard_neg_emb=negative_emb)
    assert abs(float(reference) - float(default)) > 1e-3  # the options change the loss

    mesh = partitioning.make_mesh((4, 2), num_devices=8)
    tx = optax.sgd(0.0)
    state = train_step.TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init((params, {})))
    update = jax.jit(train_step.make_update(model, tx, mesh, loss=losses.LossConfig(**options), temperature=0.05,
                                            dropout_seed=0))
    with jax.set_mesh(mesh):
        _, metrics = update(state, jax.device_put(batch, partitioning.batch_sharding(mesh)))
    assert float(metrics["loss"]) == pytest.approx(float(reference), abs=1e-5)


@pytest.mark.parametrize("rules, constrained", [(None, True), ((), False)], ids=["standard-rules", "no-rules"])
def test_the_step_applies_the_models_activation_constraints(rules, constrained):
    # The model constrains its activations by logical name; they become sharding constraints in
    # the traced step only when make_update applies the model under a rule table.
    model = dual_encoder.DualEncoder(CONFIG, "sde", 8)
    batch = make_batch(False)
    params = meta.unbox(model.init(jax.random.key(0), batch["query_tokens"], batch["doc_tokens"]))["params"]
    mesh = partitioning.make_mesh((4, 2), num_devices=8)
    tx = optax.sgd(0.1)
    state = train_step.TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init((params, {})))
    update = train_step.make_update(model, tx, mesh, temperature=0.05, dropout_seed=0, logical_axis_rules=rules)
    with jax.set_mesh(mesh):
        text = jax.jit(update).lower(state, jax.device_put(batch, partitioning.batch_sharding(mesh))).as_text()
    assert ("sharding_constraint" in text) is constrained
