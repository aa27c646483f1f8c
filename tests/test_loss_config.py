"""Tests for gtr_jax.losses.LossConfig: its checks, its gin files, and what it hands the loss.

The expected option values of each gin/losses/*.gin file are read from the file's own
`LossConfig.NAME = VALUE` lines as Python literals, not through gin; the loss built from
`LossConfig().options()` must equal the loss called with those keywords.
"""

import ast
import inspect
import pathlib
import re

import gin
import numpy as np
import pytest

from gtr_jax import losses
from gtr_jax.errors import UserError
from gtr_jax.train import partitioning

GIN_LOSSES = sorted((pathlib.Path(__file__).resolve().parents[1] / "gin" / "losses").glob("*.gin"))
OPTIONS = ("same_tower", "bidirectional", "bidirectional_reduce", "pair_alpha", "mask_duplicates")


@pytest.fixture
def clean_gin():
    """A gin config that starts and ends empty."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("option, value, allowed", [
    ("same_tower", "passage", "'query'"),
    ("same_tower", "doc", "'query'"),  # the doc-side term needs bidirectional=True
    ("same_tower", "both", "'query'"),
    ("bidirectional", "yes", "True"),
    ("bidirectional_reduce", "max", "'mean'"),
    ("pair_alpha", 1.5, "[0, 1]"),
    ("pair_alpha", -0.1, "[0, 1]"),
    ("pair_alpha", "0.1", "[0, 1]"),
    ("pair_alpha", True, "[0, 1]"),
    ("mask_duplicates", None, "False"),
])
def test_rejects_a_bad_option_in_one_line_naming_it(option, value, allowed):
    # Direct Python callers of the loss get the check as a ValueError that is also a UserError.
    q = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError) as direct:
        losses.contrastive_loss(q, q, temperature=0.05, **{option: value})
    message = str(direct.value)
    assert isinstance(direct.value, UserError) and len(message.splitlines()) == 1, message
    assert f"{option}={value!r}" in message and allowed in message, message
    # gin appends "In call to configurable 'LossConfig'" lines; the CLI prints only the first.
    with pytest.raises(UserError) as configured:
        losses.LossConfig(**{option: value})
    assert str(configured.value).splitlines()[0] == message


@pytest.mark.parametrize("options", [
    dict(pair_alpha=0), dict(pair_alpha=1.0), dict(same_tower="doc", bidirectional=True),
    dict(same_tower="both", bidirectional=True, bidirectional_reduce="mean", mask_duplicates=False),
])
def test_accepts_the_edges_and_hands_them_on(options):
    assert {k: v for k, v in losses.LossConfig(**options).options().items() if k in options} == options


def test_defaults_are_the_loss_functions_defaults():
    signature = inspect.signature(losses.contrastive_loss).parameters
    assert losses.LossConfig().options() == {name: signature[name].default for name in OPTIONS}


def test_sharded_loss_splits_over_the_meshs_data_axis_by_default():
    default = inspect.signature(losses.sharded_contrastive_loss).parameters["axis_name"].default
    assert default == partitioning.DATA
    mesh = partitioning.make_mesh((4, 2), num_devices=8)
    rng = np.random.default_rng(1)
    q, d = (rng.normal(size=(8, 4)).astype(np.float32) for _ in range(2))
    got, _ = losses.sharded_contrastive_loss(mesh, q, d, temperature=0.1, same_tower="query")
    want, _ = losses.contrastive_loss(q, d, temperature=0.1, same_tower="query")
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def written_options(path):
    """{option: value} of the file's `LossConfig.NAME = VALUE` lines, read as Python literals."""
    found = re.findall(r"^LossConfig\.(\w+) = (.+)$", path.read_text(), flags=re.MULTILINE)
    return {name: ast.literal_eval(value) for name, value in found}


@pytest.mark.parametrize("path", GIN_LOSSES, ids=[p.stem for p in GIN_LOSSES])
def test_each_loss_gin_file_gives_the_loss_of_its_keywords(path, clean_gin):
    written = written_options(path)
    assert written and set(written) <= set(OPTIONS), written
    gin.parse_config_file(str(path))
    options = losses.LossConfig().options()
    assert {k: options[k] for k in written} == written
    rng = np.random.default_rng(2)
    B, K, D = 6, 2, 8
    q, d, h = (x / np.linalg.norm(x, axis=-1, keepdims=True)
               for x in (rng.normal(size=(B, D)), rng.normal(size=(B, D)), rng.normal(size=(B, K, D))))
    batch = dict(hard_neg_emb=h.astype(np.float32), query_ids=np.array([0, 1, 0, 2, 3, 4]),
                 doc_ids=np.array([5, 6, 5, 7, 6, 8]), hard_neg_ids=rng.integers(5, 10, (B, K)))
    q, d = q.astype(np.float32), d.astype(np.float32)
    configured, configured_metrics = losses.contrastive_loss(q, d, temperature=0.05, **batch, **options)
    explicit, explicit_metrics = losses.contrastive_loss(q, d, temperature=0.05, **batch, **written)
    np.testing.assert_allclose(float(configured), float(explicit), rtol=1e-6)
    assert set(configured_metrics) == set(explicit_metrics)


def test_contrastive_loss_is_not_gin_configurable(clean_gin):
    with pytest.raises(ValueError, match="contrastive_loss"):
        gin.parse_config("contrastive_loss.same_tower = 'query'")
