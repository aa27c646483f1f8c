"""MS MARCO tasks built through seqio from small files in the official formats."""

import os

import gin
import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers the tasks)
from data_files import PASSAGES, QUERIES_DEV, QUERIES_TRAIN, tokens, tsv, write, write_msmarco
from gtr_jax.data import pipeline as data
from gtr_jax.data.sources import msmarco
from gtr_jax.data.sources.demo import DEMO_VOCABULARY
from gtr_jax.errors import UserError
from gtr_jax.data.examples import stable_ids
from gtr_jax.data.text_files import SKIPPED

LENGTHS = {"query": 12, "doc": 24}


@pytest.fixture
def msmarco_dir(tmp_path):
    directory = write_msmarco(str(tmp_path / "msmarco"))
    gin.parse_config([f"MSMARCO_DIR = '{directory}'", "msmarco_dir.directory = %MSMARCO_DIR", f"Tokenizer.path = '{DEMO_VOCABULARY}'"])
    yield directory
    gin.clear_config()


def examples(task, split="train"):
    ds = seqio.get_mixture_or_task(task).get_dataset(LENGTHS, split=split, shuffle=False)
    return list(ds.as_numpy_iterator())


def assert_pairs(got, queries, docs):
    assert len(got) == len(queries)
    for ex, query, doc in zip(got, queries, docs):
        np.testing.assert_array_equal(ex["query"], tokens([query], LENGTHS["query"])[0][: len(ex["query"])])
        assert ex["query"][-1] == 1 and 0 not in ex["query"]
        np.testing.assert_array_equal(ex["doc"], tokens([doc], LENGTHS["doc"])[0][: len(ex["doc"])])


def test_train_pairs_are_the_positive_qrels(msmarco_dir):
    got = examples("msmarco_train_pairs")
    assert_pairs(got, [QUERIES_TRAIN[10], QUERIES_TRAIN[11], QUERIES_TRAIN[12]], [PASSAGES[0], PASSAGES[1], PASSAGES[2]])
    assert [ex["query_id"] for ex in got] == list(stable_ids(["10", "11", "12"]))
    assert [ex["doc_id"] for ex in got] == list(stable_ids(["0", "1", "2"]))


def test_text_triples_carry_one_negative_and_use_texts_as_ids(msmarco_dir):
    got = examples("msmarco_train_triples")
    assert_pairs(got, ["what is the capital of france", "capital of germany"], [PASSAGES[0], PASSAGES[2]])
    np.testing.assert_array_equal(got[0]["negatives"], tokens([PASSAGES[2]], LENGTHS["doc"]))
    assert got[1]["query_id"] == stable_ids(["capital of germany"])[0]
    assert list(got[1]["negative_ids"]) == list(stable_ids([PASSAGES[3]]))


def test_qidpidtriples_join_the_collection(msmarco_dir):
    got = examples("msmarco_train_qidpidtriples")
    assert_pairs(got, [QUERIES_TRAIN[q] for q in (10, 11, 12)], [PASSAGES[p] for p in (0, 1, 2)])
    negatives = np.stack([ex["negatives"][0] for ex in got])
    np.testing.assert_array_equal(negatives, tokens([PASSAGES[2], PASSAGES[3], PASSAGES[0]], LENGTHS["doc"]))
    assert [list(ex["negative_ids"]) for ex in got] == [[v] for v in stable_ids(["2", "3", "0"])]


def test_dev_task_and_eval_set(msmarco_dir):
    got = examples("msmarco_dev", split="validation")
    assert_pairs(got, [QUERIES_DEV[20], QUERIES_DEV[21], QUERIES_DEV[21]], [PASSAGES[3], PASSAGES[1], PASSAGES[0]])
    eval_set = data.load_eval_set("msmarco_dev")
    assert list(eval_set.query_ids) == ["20", "21"] and list(eval_set.query_texts) == [QUERIES_DEV[20], QUERIES_DEV[21]]
    assert list(eval_set.doc_ids) == ["0", "1", "2", "3"] and list(eval_set.doc_texts) == list(PASSAGES.values())
    assert eval_set.qrels == {"20": {"3": 1}, "21": {"1": 1, "0": 1}}
    assert eval_set.doc_texts[1:3] == [PASSAGES[1], PASSAGES[2]]


def test_directory_comes_from_gin_when_the_dataset_is_built(msmarco_dir, tmp_path):
    other = write_msmarco(str(tmp_path / "other"))
    write(os.path.join(other, "collection.tsv"), tsv((pid, text.upper()) for pid, text in PASSAGES.items()))
    gin.parse_config([f"MSMARCO_DIR = '{other}'"])
    assert msmarco.train_pairs().examples([0])["doc"] == [PASSAGES[0].upper()]


def test_unset_directory_is_a_user_error():
    with pytest.raises(UserError, match="MSMARCO_DIR"):
        msmarco.train_pairs()


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("qrels.train.tsv", "10\t0\t0\t1\n11\t0\t9\t1\n", r"qrels\.train\.tsv:2: unknown id: pid 9 is not in collection\.tsv"),
        ("qrels.train.tsv", "10\t0\t0\t1\n99\t0\t1\t1\n", r"qrels\.train\.tsv:2: unknown id: qid 99 is not in queries\.train\.tsv"),
        ("qrels.train.tsv", "10\t0\t0\t1\n11 0 1 1\n", r"qrels\.train\.tsv:2: malformed: expected 4 tab-separated fields, found 1"),
        ("qrels.train.tsv", "10\t0\t0\tone\n", r"qrels\.train\.tsv:1: not an integer: relevance 'one'"),
        ("collection.tsv", "0\tParis\n1\t\n", r"collection\.tsv:2: empty text: the passage field is empty"),
        ("collection.tsv", b"0\tParis\n1\tcaf\xe9\n", r"collection\.tsv:2: bad UTF-8"),
        ("collection.tsv", "0\tParis\n0\tagain\n", r"collection\.tsv:2: duplicate id: pid 0 appears earlier"),
        ("queries.train.tsv", "10\tq\n\n11\tr\n", r"queries\.train\.tsv:2: empty line"),
    ],
)
def test_bad_input_names_file_and_line(msmarco_dir, file, content, message):
    write(os.path.join(msmarco_dir, file), content)
    with pytest.raises(UserError, match=message):
        msmarco.train_pairs()


def test_missing_file_is_named(msmarco_dir):
    os.remove(os.path.join(msmarco_dir, "qrels.train.tsv"))
    with pytest.raises(UserError, match=r"qrels\.train\.tsv: no such file"):
        msmarco.train_pairs()


def test_skip_policy_drops_and_counts_bad_lines(msmarco_dir, caplog):
    qrels = os.path.join(msmarco_dir, "qrels.train.tsv")
    write(qrels, "10\t0\t0\t1\n11\t0\t9\t1\nbroken\n12\t0\t2\t1\n")
    gin.parse_config(["bad_lines_policy.bad_lines = 'skip'"])
    SKIPPED.clear()
    pairs = msmarco.train_pairs()
    assert pairs.examples(range(len(pairs)))["doc_id"] == ["0", "2"]
    assert SKIPPED == {(qrels, "unknown id"): 1, (qrels, "malformed"): 1}
    assert f"skipped 2 lines of {qrels} (1 malformed, 1 unknown id)" in caplog.text
