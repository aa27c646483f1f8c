"""gtr_jax's train step against the sentence-transformers peer of bench/bench_quality.py.

From the same initial weights (the peer's own init, exported with `save_pretrained` and
read back as `gtr-jax import` does) and the same batches, five optimizer steps of
gtr_jax's update (optax Adafactor under `optim.linear_schedule`) and of the peer
(`torch.optim.Adafactor` under a LambdaLR, `MultipleNegativesRankingLoss`, configured by
bench/quality_peer.py exactly as the benchmark trains it) move every parameter the same
way.

The two Adafactors are the same algorithm (Shazeer & Stern 2018 with parameter-scale
steps, update clipping at RMS 1, β2_t = 1 - t^-0.8, no momentum) and differ in two
documented choices, which this file tests too:
  * which tensors get factored second moments: torch factors every tensor of rank ≥ 2;
    optax (t5x's rule, gtr_jax's default) only those whose two largest dimensions are
    both ≥ `min_dim_size_to_factor` = 128, keeping a full second moment for smaller ones
    (in the benchmark's model, only the 32 × 4 relative position bias). With
    `adafactor.min_dim_size_to_factor = 1` gtr_jax factors what torch factors.
  * where epsilon enters: optax adds 1e-30 to squared gradients; torch clamps the
    variance estimate at float32 eps² and its row-mean normalizer at eps. Neither is
    reached by the gradients here (nor, measured, in the benchmark).
"""

import importlib.util
import os

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from gtr_jax import losses
from gtr_jax.model import dual_encoder, t5
from gtr_jax.interop import hf_weights
from gtr_jax.train import optim, partitioning, train_step

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
CONFIG = t5.T5Config(vocab_size=128, d_model=64, num_layers=2, num_heads=4, d_kv=16, d_ff=96, dropout_rate=0.0,
                     relative_attention_num_buckets=16, relative_attention_max_distance=32)
EMBED_DIM, BATCH, STEPS, TEMPERATURE = 48, 16, 5, 0.05
SCHEDULE = dict(base_learning_rate=1e-2, warmup_steps=2, total_steps=10)


def load_peer():
    spec = importlib.util.spec_from_file_location("quality_peer", os.path.join(BENCH, "quality_peer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def token_batches(seed):
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(STEPS):
        batch = {}
        for name, width in (("query_tokens", 12), ("doc_tokens", 24)):
            tokens = np.zeros((BATCH, width), np.int32)
            for row, length in enumerate(rng.integers(3, width + 1, BATCH)):
                tokens[row, : length - 1] = rng.integers(3, CONFIG.vocab_size, length - 1)
                tokens[row, length - 1] = 1  # EOS
            batch[name] = tokens
        batches.append(batch)
    return batches


def read_params(model, directory):
    """The peer's weights in gtr_jax's parameter tree (the reader `gtr-jax import` uses)."""
    model.save(directory, safe_serialization=True)
    _, encoder, kernel, _, _ = hf_weights.read_sentence_transformers(directory)
    return {k: np.asarray(v) for k, v in flatten_dict(hf_weights.model_params(encoder, kernel, "sde")).items()}


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory, spm_path):
    """(initial params, params after STEPS peer steps, batches, per-step peer losses)."""
    peer = load_peer()
    root = tmp_path_factory.mktemp("peer")
    model = peer.build_model(CONFIG, EMBED_DIM, spm_path, seed=0, workdir=str(root))
    initial = read_params(model, str(root / "initial"))
    optimizer, scheduler = peer.make_optimizer(model, **SCHEDULE)
    loss_fn = peer.make_loss(model, "samtone", TEMPERATURE)
    batches = token_batches(seed=1)
    losses = [peer.train_step(model, loss_fn, optimizer, scheduler, b["query_tokens"], b["doc_tokens"])
              for b in batches]
    return initial, read_params(model, str(root / "final")), batches, losses


def gtr_jax_run(initial, batches, **adafactor_options):
    """Params after STEPS gtr_jax updates from `initial`, and the per-step losses."""
    model = dual_encoder.ModelConfig(CONFIG, "sde", EMBED_DIM).build()
    tx = optim.adafactor(total_steps=SCHEDULE["total_steps"], base_learning_rate=SCHEDULE["base_learning_rate"],
                         warmup_steps=SCHEDULE["warmup_steps"], **adafactor_options)
    params = jax.tree.map(np.asarray, unflatten_dict(initial))
    state = train_step.TrainState(np.zeros((), np.int32), params, {}, tx.init((params, {})))
    mesh = partitioning.make_mesh((1, 1), num_devices=1)
    # The loss of a run with gin/losses/samtone_query.gin.
    update = jax.jit(train_step.make_update(model, tx, mesh, loss=losses.LossConfig(same_tower="query"),
                                            temperature=TEMPERATURE, dropout_seed=0))
    step_losses = []
    with jax.set_mesh(mesh):
        for batch in batches:
            state, metrics = update(state, batch)
            step_losses.append(float(metrics["loss"]))
    return {k: np.asarray(v) for k, v in flatten_dict(jax.device_get(state.params)).items()}, step_losses


def relative_differences(ours, theirs, initial):
    """Per tensor: max |our update - the peer's update| / max |the peer's update|."""
    return {path: float(np.abs(ours[path] - theirs[path]).max() / np.abs(theirs[path] - initial[path]).max())
            for path in initial}


def test_factoring_what_torch_factors_gives_the_peers_parameters(peer_run):
    initial, theirs, batches, peer_losses = peer_run
    ours, our_losses = gtr_jax_run(initial, batches, min_dim_size_to_factor=1)
    # The same losses at every step (the first from identical weights, then from weights
    # that agree): float32 forward passes agree to ~1e-7 relative.
    np.testing.assert_allclose(our_losses, peer_losses, rtol=1e-5)
    # Every parameter moved, and moved the same way. float32 rounding (different summation
    # orders in the two frameworks) leaves ~1e-5 of the update (measured: at most 9e-6);
    # a different optimizer rule leaves more than 1e-2 (the test below).
    for path, difference in relative_differences(ours, theirs, initial).items():
        assert difference < 1e-4, (path, difference)


def test_the_default_keeps_full_second_moments_of_small_matrices(peer_run):
    """t5x's rule (the default) factors only matrices with two dimensions ≥ 128: here none
    of the encoder's, so each matrix gets a per-element second moment and steps differently
    from torch's factored one (the norm scales follow, through the matrices)."""
    initial, theirs, batches, _ = peer_run
    ours, _ = gtr_jax_run(initial, batches)
    for path, difference in relative_differences(ours, theirs, initial).items():
        assert difference > 1e-2, (path, difference)
