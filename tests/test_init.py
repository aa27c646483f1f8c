"""Every parameter of a from-scratch model is drawn from the distribution its module says.

Two independent checks per tensor: the sample against the closed-form distribution the
docstrings of t5.py and dual_encoder.py claim (std within sampling error, and a
Kolmogorov-Smirnov test of the shape), and the encoder's tensors against the same
tensors of a Hugging Face `T5EncoderModel` initialized by transformers itself (a
two-sample KS test), the reference whose init gtr_jax follows.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax.core import meta
from flax.traverse_util import flatten_dict

import hf_models
from gtr_jax.model import dual_encoder, t5
from gtr_jax.interop import hf_weights

D_MODEL, D_KV, HEADS, D_FF, VOCAB, BUCKETS = 64, 16, 4, 128, 512, 32
CONFIG = t5.T5Config(vocab_size=VOCAB, d_model=D_MODEL, num_layers=2, num_heads=HEADS, d_kv=D_KV, d_ff=D_FF,
                     relative_attention_num_buckets=BUCKETS)
# Lowest KS p-value accepted. The draws are seeded, so a pass is repeatable; a wrong std
# (as the former N(0, 1) relative position bias, 8 standard deviations here) gives p < 1e-20.
MIN_P = 1e-4


def normal(std):
    return scipy.stats.norm(scale=std)


def truncated_normal(std):
    # flax's lecun_normal: a normal cut at ±2 of its own scale, rescaled to have `std`.
    scale = std / scipy.stats.truncnorm(-2, 2).std()
    return scipy.stats.truncnorm(-2, 2, scale=scale)


def uniform(std):
    limit = std * np.sqrt(3)
    return scipy.stats.uniform(-limit, 2 * limit)


def claimed_distribution(path: tuple[str, ...], config: t5.T5Config):
    """The distribution of one parameter as the modules' docstrings state it (None: all ones)."""
    name = path[-2] if path[-1] in ("kernel", "scale") else path[-1]
    if path[-1] == "scale":
        return None
    if name == "token_embedder":
        return normal(1.0)
    if name == "relpos_bias":
        if config.relpos_bias_init == "t5x":
            return uniform(np.sqrt(2 / (config.relative_attention_num_buckets + config.num_heads)))
        return normal(config.d_model**-0.5)
    if name == "dense":  # the projection
        return truncated_normal(config.d_model**-0.5)
    stds = {"query": (config.d_model * config.d_kv) ** -0.5, "key": config.d_model**-0.5,
            "value": config.d_model**-0.5, "out": (config.num_heads * config.d_kv) ** -0.5,
            "wi_0": config.d_model**-0.5, "wi_1": config.d_model**-0.5, "wi": config.d_model**-0.5,
            "wo": config.d_ff**-0.5}
    return normal(stds[name])


def initial_params(config: t5.T5Config, tower: str, seed: int = 0) -> dict:
    model = dual_encoder.ModelConfig(config, tower, embed_dim=96).build()
    tokens = jnp.ones((1, 2), jnp.int32)
    params = meta.unbox(model.init(jax.random.key(seed), tokens, tokens)["params"])
    return {k: np.asarray(v, np.float64) for k, v in flatten_dict(params).items()}


def check_sample(path, values, distribution):
    values = values.ravel()
    if distribution is None:
        np.testing.assert_array_equal(values, 1.0, err_msg=str(path))
        return
    np.testing.assert_allclose(values.mean(), 0.0, atol=5 * distribution.std() / np.sqrt(values.size),
                               err_msg=f"{path}: mean")
    # The standard error of a sample std: std * sqrt((kurtosis - 1) / (4 n)).
    kurtosis = distribution.stats(moments="k") + 3
    std_error = distribution.std() * np.sqrt((kurtosis - 1) / (4 * values.size))
    assert abs(values.std() - distribution.std()) < 5 * std_error, (path, values.std(), distribution.std())
    assert scipy.stats.kstest(values, distribution.cdf).pvalue > MIN_P, path


@pytest.mark.parametrize("tower", ["sde", "ade_spl"])
@pytest.mark.parametrize("relpos_bias_init", ["hf", "t5x"])
def test_every_parameter_follows_its_claimed_distribution(tower, relpos_bias_init):
    config = t5.T5Config(**{**CONFIG.to_dict(), "relpos_bias_init": relpos_bias_init})
    params = initial_params(config, tower)
    for path, values in params.items():
        check_sample(path, values, claimed_distribution(path, config))
    if tower == "ade_spl":  # two towers start from different draws
        assert not np.array_equal(params[("query_encoder", "token_embedder")], params[("doc_encoder", "token_embedder")])


def draws(config: t5.T5Config) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """(path, flat values) of each separate draw of an SDE model's init: a scanned stack's
    tensors (on a leading layer axis) are one draw per layer."""
    out = []
    for path, values in initial_params(config, "sde").items():
        layers = values if config.scan_layers and "layers" in path else [values]
        out += [(path, layer.ravel()) for layer in layers]
    return out


def test_scanned_layers_draw_the_same_distributions():
    config = t5.T5Config(**{**CONFIG.to_dict(), "scan_layers": True})
    for path, values in draws(config):
        check_sample(path, values, claimed_distribution(path, config))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_no_two_tensors_share_a_draw(scan_layers):
    # Each tensor (and each layer of a scanned stack) must get its own random key: tensors
    # drawn from one key are correlated (|r| = 1 for equal shapes and distributions) while
    # every marginal distribution above still looks right.
    config = t5.T5Config(**{**CONFIG.to_dict(), "scan_layers": scan_layers})
    samples = [(path, values) for path, values in draws(config) if values.std() > 0]  # not the norms' ones
    assert len(samples) == 2 + 7 * CONFIG.num_layers + 1  # embedding, relpos bias, 7 kernels a layer, projection
    for (path_a, a), (path_b, b) in itertools.combinations(samples, 2):
        if a.size == b.size:
            # Independent draws: r is about N(0, 1/n); 6/sqrt(n) has p ~ 2e-9.
            assert abs(np.corrcoef(a, b)[0, 1]) < 6 / np.sqrt(a.size), (path_a, path_b)


def test_encoder_init_matches_hugging_face_t5_tensor_by_tensor():
    hf_config = hf_models.t5_config(vocab_size=VOCAB, d_model=D_MODEL, d_kv=D_KV, num_heads=HEADS, d_ff=D_FF,
                                    num_layers=2, relative_attention_num_buckets=BUCKETS)
    hf_state = {k: v.numpy().astype(np.float64) for k, v in hf_models.random_t5(hf_config, seed=3).state_dict().items()}
    ours = {path[1:]: values for path, values in initial_params(CONFIG, "sde").items() if path[0] == "encoder"}
    names = hf_weights.hf_tensor_names(CONFIG)
    assert set(names) == set(ours)
    for path, (hf_name, transposed) in names.items():
        theirs = hf_state[hf_name].T if transposed else hf_state[hf_name]
        assert theirs.shape == ours[path].shape, path
        if path[-1] == "scale":
            np.testing.assert_array_equal(ours[path], theirs)
            continue
        result = scipy.stats.ks_2samp(ours[path].ravel(), theirs.ravel())
        assert result.pvalue > MIN_P, (path, hf_name, ours[path].std(), theirs.std())


def test_relpos_bias_init_is_validated():
    with pytest.raises(ValueError, match="relpos_bias_init"):
        t5.T5Config(relpos_bias_init="normal")
