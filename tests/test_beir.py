"""BEIR directories as evaluation tasks."""

import os

import gin
import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers the tasks)
from data_files import tokens, write, write_beir
from gtr_jax.data.sources import beir
from gtr_jax.data import pipeline as data
from gtr_jax.data.sources.demo import DEMO_VOCABULARY
from gtr_jax.errors import UserError
from tasks.beir import beir_task


@pytest.fixture
def beir_root(tmp_path):
    write_beir(str(tmp_path / "beir" / "scifact"))
    gin.parse_config([f"BEIR_DIR = '{tmp_path / 'beir'}'", "beir_dir.directory = %BEIR_DIR", f"Tokenizer.path = '{DEMO_VOCABULARY}'"])
    yield str(tmp_path / "beir")
    gin.clear_config()


def test_eval_set_prepends_titles_and_keeps_judged_queries(beir_root):
    eval_set = data.load_eval_set("beir_scifact")
    assert eval_set.query_ids == ["q1", "q2"] and eval_set.query_texts == ["capital of france", "german capital"]
    assert eval_set.doc_ids == ["d1", "d2", "d3"]
    assert eval_set.doc_texts == ["Paris Paris is the capital of France.", "Berlin is the capital of Germany.", "Rhine A river in Europe."]
    assert eval_set.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}


def test_any_directory_and_split_through_seqio(beir_root, tmp_path):
    directory = write_beir(str(tmp_path / "mine"))
    write(os.path.join(directory, "qrels", "dev.tsv"), "query-id\tcorpus-id\tscore\nq2\td3\t1\n")
    name = beir_task("mine", directory=directory, split="dev")
    got = list(seqio.get_mixture_or_task(name).get_dataset({"query": 8, "doc": 16}, split="dev", shuffle=False).as_numpy_iterator())
    assert len(got) == 1
    np.testing.assert_array_equal(got[0]["query"], tokens(["german capital"], 8)[0][: len(got[0]["query"])])
    np.testing.assert_array_equal(got[0]["doc"], tokens(["Rhine A river in Europe."], 16)[0][: len(got[0]["doc"])])


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\tdX\t1\n", r"test\.tsv:2: unknown id: corpus-id dX"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nqX\td1\t1\n", r"test\.tsv:2: unknown id: query-id qX"),
        ("qrels/test.tsv", "q1\td1\t1\n", r"test\.tsv:1: expected the header"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\n", r"test\.tsv:2: malformed"),
        ("corpus.jsonl", '{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": " "}\n', r"corpus\.jsonl:2: empty text"),
        ("corpus.jsonl", '{"_id": "d1", "text": "x"}\n[1, 2]\n', r"corpus\.jsonl:2: malformed: expected a JSON object"),
        ("queries.jsonl", b'{"_id": "q1", "text": "caf\xe9"}\n', r"queries\.jsonl:1: bad UTF-8"),
    ],
)
def test_bad_input_names_file_and_line(beir_root, file, content, message):
    write(os.path.join(beir_root, "scifact", file), content)
    with pytest.raises(UserError, match=message):
        beir.eval_set(os.path.join(beir_root, "scifact"))


def test_missing_file_is_named(beir_root):
    with pytest.raises(UserError, match=r"nowhere/corpus\.jsonl: no such file"):
        beir.eval_set(os.path.join(beir_root, "nowhere"))
