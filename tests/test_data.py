"""The training pipeline: determinism, resumption, host sharding, mixtures, the mesh."""

import itertools
import os

import gin
import jax
import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers the tasks)
from data_files import PASSAGES, QUERIES_TRAIN, tokens, write_msmarco
from gtr_jax.data.sources import beir, demo, msmarco
from gtr_jax.data import pipeline as data
from gtr_jax.data.sources.demo import DEMO_VOCABULARY
from gtr_jax.errors import UserError
from gtr_jax.data.examples import stable_ids
from gtr_jax.data.features import DualEncoderFeatureConverter
from gtr_jax.data.text_files import bad_lines_policy

LENGTHS = {"query": 16, "doc": 32}


@pytest.fixture
def msmarco_files(tmp_path):
    gin.parse_config([f"msmarco_dir.directory = '{write_msmarco(str(tmp_path))}'", f"Tokenizer.path = '{DEMO_VOCABULARY}'"])
    yield
    gin.clear_config()


def take(name, steps, **kwargs):
    kwargs = {"global_batch_size": 8, "feature_lengths": LENGTHS, "seed": 3, **kwargs}
    return list(itertools.islice(data.batch_iterator(name, **kwargs), steps))


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_batches_are_tokenized_like_the_encoder(msmarco_files):
    (batch,) = take("msmarco_train_pairs", 1, global_batch_size=3, shuffle=False)
    assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
        "query_tokens": (np.int32, (3, 16)),
        "doc_tokens": (np.int32, (3, 32)),
        "query_ids": (np.int32, (3,)),
        "doc_ids": (np.int32, (3,)),
    }
    np.testing.assert_array_equal(batch["query_tokens"], tokens([QUERIES_TRAIN[q] for q in (10, 11, 12)], 16))
    np.testing.assert_array_equal(batch["doc_tokens"], tokens([PASSAGES[p] for p in (0, 1, 2)], 32))


def test_negatives_have_their_own_axis(msmarco_files):
    (batch,) = take("msmarco_train_qidpidtriples", 1, global_batch_size=3, shuffle=False)
    assert batch["negative_tokens"].shape == (3, 1, 32) and batch["negative_ids"].shape == (3, 1)
    np.testing.assert_array_equal(batch["negative_tokens"][:, 0], tokens([PASSAGES[p] for p in (2, 3, 0)], 32))


def test_same_seed_same_batches_and_resuming_at_k_continues_exactly():
    run = take("demo_train", 6)
    assert_same(run, take("demo_train", 6))
    assert_same(run[4:], take("demo_train", 2, start_step=4))
    assert not np.array_equal(run[0]["query_ids"], take("demo_train", 1, seed=4)[0]["query_ids"])


def test_epochs_cover_every_example_once_with_a_fresh_order_each():
    size = len(demo.pairs("train"))
    steps = -(-2 * size // 64)
    ids = np.concatenate([b["doc_ids"] for b in take("demo_train", steps, global_batch_size=64)])
    first, second = ids[:size], ids[size : 2 * size]
    assert len(set(first)) == size and set(first) == set(second)
    assert not np.array_equal(first, second)


def test_hosts_split_each_global_batch_without_overlap():
    single = take("demo_train", 3)
    hosts = [take("demo_train", 3, shard_index=i, num_shards=2) for i in range(2)]
    for step in range(3):
        for key in single[step]:
            np.testing.assert_array_equal(np.concatenate([h[step][key] for h in hosts]), single[step][key])


def test_seqio_shards_of_an_epoch_partition_the_task():
    task = seqio.get_mixture_or_task("demo_test")

    def doc_ids(shard_info=None):
        ds = task.get_dataset(LENGTHS, split="test", shuffle=True, seed=1, shard_info=shard_info)
        return [int(ex["doc_id"]) for ex in ds.as_numpy_iterator()]

    whole = doc_ids()
    parts = [doc_ids(seqio.ShardInfo(i, 2)) for i in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(whole) and len(set(whole)) == len(whole)


def test_seqio_and_numpy_pipelines_agree():
    task = seqio.get_mixture_or_task("demo_test")
    ds = DualEncoderFeatureConverter()(task.get_dataset(LENGTHS, split="test", shuffle=False), LENGTHS)
    expected = next(ds.batch(5).as_numpy_iterator())
    (batch,) = take("demo_test", 1, split="test", global_batch_size=5, shuffle=False)
    assert_same([batch], [expected])


def test_converter_with_negatives(msmarco_files):
    task = seqio.get_mixture_or_task("msmarco_train_triples")
    ds = DualEncoderFeatureConverter(with_negatives=True)(task.get_dataset(LENGTHS, split="train", shuffle=False), LENGTHS)
    expected = next(ds.batch(2).as_numpy_iterator())
    (batch,) = take("msmarco_train_triples", 1, global_batch_size=2, shuffle=False)
    assert_same([batch], [expected])


def test_mixture_batches_follow_the_rates():
    seqio.MixtureRegistry.add("test_demo_mixture", [("demo_train", 3), ("demo_test", 1)])
    try:
        batches = take("test_demo_mixture", 8, global_batch_size=64)
        test_hashes = set(stable_ids(data.load_eval_set("demo_test").query_ids))
        share = np.mean([q in test_hashes for b in batches for q in b["query_ids"]])
        assert 0.15 < share < 0.35
        assert_same(batches[5:], take("test_demo_mixture", 3, global_batch_size=64, start_step=5))
    finally:
        seqio.MixtureRegistry.remove("test_demo_mixture")


def test_eval_set_and_errors():
    eval_set = data.load_eval_set("demo_test")
    assert len(eval_set.query_ids) == len(eval_set.qrels) and len(eval_set.doc_ids) == len(demo.all_pairs())
    with pytest.raises(UserError, match="unknown task"):
        data.load_eval_set("no_such_task")
    with pytest.raises(UserError, match="only the split 'train'"):
        take("demo_train", 1, split="test")
    with pytest.raises(UserError, match="does not split over 3 hosts"):
        take("demo_train", 1, num_shards=3)
    assert data.task_vocabulary_path("demo_train") == DEMO_VOCABULARY


def test_gin_data_file_binds_directory_macros(tmp_path):
    gin_file = os.path.join(os.path.dirname(__file__), "..", "gin", "data.gin")
    directory = write_msmarco(str(tmp_path))
    gin.parse_config_files_and_bindings([gin_file], [f"MSMARCO_DIR = '{directory}'", "bad_lines_policy.bad_lines = 'skip'"])
    try:
        assert len(msmarco.train_pairs()) == 3
        assert bad_lines_policy() == "skip"
        with pytest.raises(UserError, match="BEIR_DIR"):
            beir.beir_dir()
    finally:
        gin.clear_config()
