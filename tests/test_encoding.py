"""Corpus encoding: sharded over devices, streamed to disk shards, resumable."""

import os

import numpy as np
import pytest

from gtr_jax.data.sources import demo
from gtr_jax.eval import encoding
from gtr_jax.train import partitioning
from gtr_jax.errors import UserError
from retrieval_case import random_model_dir

TEXTS = [passage for _, _, passage, _ in demo.all_pairs()[:150]] + ["short", "x"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_model_dir(str(tmp_path_factory.mktemp("model")), seed=0)


@pytest.fixture(scope="module")
def reference(model_dir):
    """Single-device embeddings of TEXTS from each tower."""
    encoder = encoding.load_text_encoder(model_dir)
    return {tower: encoder.embed(TEXTS, tower, 32, batch_size=16, progress=False) for tower in ("query", "doc")}


def test_sharded_encoding_equals_single_device(model_dir, reference):
    mesh = partitioning.make_mesh((4, 2))
    encoder = encoding.load_text_encoder(model_dir, mesh=mesh)
    # 10 rows a batch do not split over 4 data shards: the batch is rounded up to 12.
    for tower in ("query", "doc"):
        np.testing.assert_allclose(encoder.embed(TEXTS, tower, 32, batch_size=10, progress=False), reference[tower],
                                   atol=2e-6, rtol=0)
    assert not np.allclose(reference["query"], reference["doc"], atol=1e-3), "ade_spl towers should differ"


def test_shards_hold_the_ordered_embeddings_and_resume(model_dir, reference, tmp_path):
    encoder = encoding.load_text_encoder(model_dir, mesh=partitioning.make_mesh((8, 1)))
    order = np.random.default_rng(0).permutation(len(TEXTS))
    directory = str(tmp_path / "shards")

    def run(fingerprint):
        return encoder.embed_to_shards(TEXTS, "doc", 32, directory, order=order, shard_size=40, batch_size=16,
                                       fingerprint=fingerprint, progress=False)

    shards = run({"step": 1})
    assert [len(s) for s in shards] == [40, 40, 40, 32]
    np.testing.assert_allclose(np.concatenate(shards), reference["doc"][order], atol=2e-6, rtol=0)

    # A rerun keeps complete shards and embeds only missing ones.
    kept = os.path.join(directory, encoding.SHARD_FILE.format(0))
    stamp = os.stat(kept).st_mtime_ns
    os.remove(os.path.join(directory, encoding.SHARD_FILE.format(2)))
    np.testing.assert_allclose(np.concatenate(run({"step": 1})), reference["doc"][order], atol=2e-6, rtol=0)
    assert os.stat(kept).st_mtime_ns == stamp
    # Another model step is another embedding: everything is redone.
    run({"step": 2})
    assert os.stat(kept).st_mtime_ns != stamp


def test_incomplete_shard_directory_is_an_error(model_dir, tmp_path):
    encoder = encoding.load_text_encoder(model_dir)
    directory = str(tmp_path / "shards")
    encoder.embed_to_shards(TEXTS[:30], "doc", 32, directory, shard_size=20, progress=False)
    os.remove(os.path.join(directory, encoding.SHARD_FILE.format(1)))
    with pytest.raises(UserError, match="embeddings-00001.npy: missing"):
        encoding.load_shards(directory)
    with pytest.raises(UserError, match="no manifest.json"):
        encoding.load_shards(str(tmp_path))
