"""BM25 (gtr_jax.eval.bm25) against bm25s itself and the BM25 formula, and `gtr-jax evaluate --ranker=bm25`
against pytrec_eval on the run file it writes."""

import json
import math
import os
from collections import Counter

import bm25s
import gin
import numpy as np
import pytest
import pytrec_eval
import Stemmer

from data_files import jsonl, write
from retrieval_case import BM25_CORPUS as CORPUS
from gtr_jax.data.sources import beir
from gtr_jax.eval import bm25
from gtr_jax.cli import main as cli

QUERIES = [
    "red fox",  # doc07 and doc21 tie at the top
    "capital",  # four documents tie
    "python programming language",
    "running dogs",  # stems: run, dog
    "tigers and cats",
    "zebra",  # no corpus term: every document scores 0
    "the of and",  # stopwords only
]


@pytest.fixture(scope="module")
def index():
    return bm25.Bm25Index.build(list(CORPUS), list(CORPUS.values()))


def bm25s_reference(k: int):
    """bm25s with its defaults, English stopwords and PyStemmer, on the corpus in descending id order."""
    ids = sorted(CORPUS, reverse=True)
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([CORPUS[i] for i in ids], stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    rows, scores = retriever.retrieve(bm25s.tokenize(QUERIES, stopwords="en", stemmer=stemmer, show_progress=False),
                                      k=k, show_progress=False)
    return np.asarray(ids)[rows], scores


def lucene_scores(query: str) -> dict[str, float]:
    """{doc id: score} by Lucene's BM25 (k1 1.5, b 0.75), written out over bm25s's tokens."""
    stemmer = Stemmer.Stemmer("english")
    tokens = dict(zip(CORPUS, bm25s.tokenize(list(CORPUS.values()), stopwords="en", stemmer=stemmer,
                                             return_ids=False, show_progress=False)))
    terms = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)[0]
    n, avgdl = len(tokens), sum(map(len, tokens.values())) / len(tokens)
    out = {}
    for doc_id, doc in tokens.items():
        tf, score = Counter(doc), 0.0
        for term in terms:
            df = sum(term in d for d in tokens.values())
            if tf[term]:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf[term] / (tf[term] + 1.5 * (1 - 0.75 + 0.75 * len(doc) / avgdl))
        out[doc_id] = score
    return out


def test_search_is_bm25s_retrieve(index):
    doc_ids, scores = index.search(QUERIES, 5)
    want_ids, want_scores = bm25s_reference(5)
    assert doc_ids.shape == scores.shape == (len(QUERIES), 5)
    np.testing.assert_array_equal(doc_ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)
    assert doc_ids[0, :2].tolist() == ["doc21", "doc07"] and scores[0, 0] == scores[0, 1] > scores[0, 2]
    assert doc_ids[1, :4].tolist() == ["doc26", "doc18", "doc11", "doc03"] and len(set(scores[1, :4])) == 1


def test_scores_are_lucene_bm25_and_ties_rank_the_higher_id_first(index):
    doc_ids, scores = index.search(QUERIES, len(CORPUS))
    for query, row_ids, row_scores in zip(QUERIES, doc_ids, scores):
        expected = lucene_scores(query)
        np.testing.assert_allclose(row_scores, [expected[d] for d in row_ids], rtol=1e-5, atol=1e-6)
        # trec_eval's order of the full corpus: score descending, then id descending.
        ranked = sorted(sorted(CORPUS, reverse=True), key=lambda d: -row_scores[row_ids.tolist().index(d)])
        assert row_ids.tolist() == ranked
    assert not scores[5].any() and doc_ids[5].tolist() == sorted(CORPUS, reverse=True)
    assert not scores[6].any()
    assert scores[3, 0] > 0 and {"doc05", "doc02", "doc19"} <= set(doc_ids[3, :5])  # "runs", "Running" stem to "run"


def test_search_pads_past_the_corpus(index):
    doc_ids, scores = index.search(QUERIES[:2], len(CORPUS) + 3)
    full_ids, full_scores = index.search(QUERIES[:2], len(CORPUS))
    np.testing.assert_array_equal(doc_ids[:, : len(CORPUS)], full_ids)
    np.testing.assert_array_equal(scores[:, : len(CORPUS)], full_scores)
    assert (doc_ids[:, len(CORPUS):] == "").all() and np.isneginf(scores[:, len(CORPUS):]).all()
    assert index.search([], 4)[0].shape == (0, 4)


# A BEIR-format dataset in which document "q1" is query q1's own text: BEIR's rule keeps it out.
BEIR_CORPUS = [{"_id": doc_id, "title": "", "text": text} for doc_id, text in CORPUS.items()] + [
    {"_id": "q1", "title": "Capital", "text": "capital of france"},
]
BEIR_QUERIES = [{"_id": "q1", "text": "capital of france"}, {"_id": "q2", "text": "red fox"},
                {"_id": "q3", "text": "python programming"}]
BEIR_QRELS = [("q1", "doc03", 1), ("q2", "doc07", 1), ("q2", "doc12", 1), ("q3", "doc22", 2), ("q3", "doc04", 0)]
TOP_K = 5


@pytest.fixture
def beir_eval(tmp_path, capsys):
    """(BEIR folder, output folder, printed lines) of `gtr-jax evaluate --ranker=bm25` on the dataset above."""
    from tasks.beir import beir_task

    folder = tmp_path / "bm25test"
    write(str(folder / "corpus.jsonl"), jsonl(BEIR_CORPUS))
    write(str(folder / "queries.jsonl"), jsonl(BEIR_QUERIES))
    write(str(folder / "qrels" / "test.tsv"),
          "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in BEIR_QRELS))
    task = beir_task("bm25test", directory=str(folder))
    gin.clear_config()
    try:
        assert cli.main(["evaluate", "--gin_file=eval/retrieval.gin", "--ranker=bm25", f"--gin.MIXTURE_OR_TASK_NAME={task}",
                         f"--gin.EVAL_OUTPUT_DIR={tmp_path / 'eval'}", f"--gin.EVAL_TOP_K={TOP_K}",
                         "--gin.evaluate_bm25.progress=False"]) == 0
    finally:
        gin.clear_config()
    return folder, tmp_path / "eval", capsys.readouterr().out.splitlines()


def test_evaluate_bm25_writes_metrics_that_pytrec_eval_gives_the_run(beir_eval):
    folder, out, printed = beir_eval
    assert sorted(os.listdir(out)) == ["beir_bm25test.run", "metrics.json"]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["ranker"] == "bm25" and summary["bm25"] == bm25.settings() and summary["top_k"] == TOP_K
    assert summary["bm25"]["library"] == "bm25s 0.3.16"
    results = summary["results"]["beir_bm25test"]

    run = {}
    for line in (out / "beir_bm25test.run").read_text().splitlines():
        qid, _, doc_id, _, score, _ = line.split()
        run.setdefault(qid, {})[doc_id] = float(score)
    assert {qid: len(docs) for qid, docs in run.items()} == {"q1": TOP_K, "q2": TOP_K, "q3": TOP_K}
    qrels = {}
    for qid, doc_id, relevance in BEIR_QRELS:
        qrels.setdefault(qid, {})[doc_id] = relevance
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10,100", "recip_rank", "P.1", "recall.100", "map"}).evaluate(run)
    assert results["num_q"] == len(per_query) == 3
    for measure in ("ndcg_cut_10", "ndcg_cut_100", "recip_rank", "P_1", "recall_100", "map"):
        assert results[measure] == pytest.approx(np.mean([q[measure] for q in per_query.values()]), abs=1e-12), measure
    assert 0 < results["ndcg_cut_10"] < 1

    line = next(line for line in printed if line.startswith("beir_bm25test "))
    assert line == f"beir_bm25test (bm25, 3 queries, {len(BEIR_CORPUS)} documents): ndcg_cut_10 {results['ndcg_cut_10']:.4f}"


def test_evaluate_bm25_never_retrieves_a_query_s_own_id(beir_eval):
    folder, out, _ = beir_eval
    run = [line.split() for line in (out / "beir_bm25test.run").read_text().splitlines()]
    q1 = [doc_id for qid, _, doc_id, *_ in run if qid == "q1"]
    # Unfiltered, BM25 ranks document q1 (the query's own text) first.
    eval_set = beir.eval_set(str(folder))
    unfiltered = bm25.Bm25Index.build(eval_set.doc_ids, eval_set.doc_texts).search(["capital of france"], TOP_K + 1)[0][0]
    assert unfiltered[0] == "q1"
    assert q1 == unfiltered[1:].tolist()


def test_missing_output_dir_is_one_line(capsys):
    gin.clear_config()
    try:
        assert cli.main(["evaluate", "--gin_file=eval/retrieval.gin", "--ranker=bm25",
                         "--gin.MIXTURE_OR_TASK_NAME=demo_test"]) == 1
    finally:
        gin.clear_config()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "EVAL_OUTPUT_DIR" in err and "Traceback" not in err
