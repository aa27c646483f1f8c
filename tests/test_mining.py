"""`gtr-jax mine`: candidate lists against bm25s and numpy brute force, the false-negative rules against
a plain-Python reference and planted false negatives, the draw, and the command's errors."""

import json
import os

import bm25s
import gin
import numpy as np
import pytest
import Stemmer

from data_files import write_msmarco
from gtr_jax.cli import main as cli
from gtr_jax.data.examples import EvalSet
from gtr_jax.data.negatives_file import read_negatives
from gtr_jax.eval import retrieval
from gtr_jax.mining import candidates, filters, mine
from retrieval_case import BM25_CORPUS as CORPUS

# Over BM25_CORPUS: doc07/doc21 are one text, doc03/26/11/18 tie on "capital".
QUERIES = ["red fox fox", "capital", "python programming language", "running dogs", "tigers and cats", "zebra",
           "the of and", "kitchen cheese red"]


def corpus_set(qrels=None) -> EvalSet:
    query_ids = [f"q{i}" for i in range(len(QUERIES))]
    return EvalSet(query_ids, QUERIES, list(CORPUS), list(CORPUS.values()), qrels or {})


def bm25s_reference():
    """bm25s itself, tokenizer to retrieve, with eval/bm25.py's settings, on the corpus in descending id order."""
    ids = sorted(CORPUS, reverse=True)
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    retriever.index(bm25s.tokenize([CORPUS[i] for i in ids], stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    queries = bm25s.tokenize(QUERIES, stopwords="en", stemmer=stemmer, show_progress=False)
    return ids, retriever, queries


@pytest.fixture(scope="module")
def bm25_miner():
    # Tokenized three texts at a time: the index is built from several chunks.
    original, candidates.TOKENIZE_CHUNK = candidates.TOKENIZE_CHUNK, 3
    try:
        return candidates.Bm25Miner(corpus_set())
    finally:
        candidates.TOKENIZE_CHUNK = original


def test_bm25_candidates_are_bm25s_ranking(bm25_miner):
    ids, retriever, queries = bm25s_reference()
    rows, scores = retriever.retrieve(queries, k=len(ids), show_progress=False)
    doc_row = {d: i for i, d in enumerate(CORPUS)}
    for k in (1, 3, 6, len(ids) + 5):
        got_rows, got_scores, complete = bm25_miner.candidates(np.arange(len(QUERIES)), k)
        for q in range(len(QUERIES)):
            matched = scores[q] > 0  # BM25's candidates: the documents sharing a term with the query
            want = [doc_row[ids[r]] for r in rows[q][matched]]
            assert got_rows[q][got_rows[q] >= 0].tolist() == want[:k], (QUERIES[q], k)
            np.testing.assert_array_equal(got_scores[q][: min(k, len(want))], scores[q][matched][:k])
            assert complete[q] == (len(want) <= k)
    # Equal scores rank the higher id first, as bm25s does on the index's descending-id order.
    first = bm25_miner.candidates([1], 4)[0][0]
    assert [list(CORPUS)[r] for r in first] == ["doc26", "doc18", "doc11", "doc03"]
    # The index built chunk by chunk answers bm25s's own retrieve exactly like one built at once.
    again_rows, again_scores = bm25_miner.index.retrieve(queries, k=len(ids), show_progress=False)
    np.testing.assert_array_equal(again_rows, rows)
    np.testing.assert_array_equal(again_scores, scores)


def test_bm25_pair_scores_are_bm25s_scores(bm25_miner):
    ids, retriever, queries = bm25s_reference()
    strings = bm25s.tokenization.convert_tokenized_to_string_list(queries)
    doc_row = {d: i for i, d in enumerate(CORPUS)}
    query_rows = np.repeat(np.arange(len(QUERIES)), len(ids))
    doc_rows = np.tile([doc_row[d] for d in ids], len(QUERIES))
    got = bm25_miner.pair_scores(query_rows, doc_rows).reshape(len(QUERIES), len(ids))
    for q, terms in enumerate(strings):
        want = retriever.get_scores(terms) if terms else np.zeros(len(ids), np.float32)
        np.testing.assert_array_equal(got[q], want)


def brute_force(queries, corpus, doc_ids):
    """Each query's corpus rows by float64 score, ties by descending id (retrieval.trec_order)."""
    scores = queries.astype(np.float64) @ corpus.T.astype(np.float64)
    position = np.empty(len(doc_ids), np.int64)
    position[retrieval.trec_order(doc_ids)] = np.arange(len(doc_ids))
    return np.stack([np.lexsort((position, -s)) for s in scores]), scores


@pytest.mark.parametrize("blocks", [1, 3])
def test_model_candidates_are_brute_force_on_8_devices(blocks):
    rng = np.random.default_rng(0)
    num_docs, num_queries = 203, 37  # not multiples of 8
    doc_ids = [f"d{rng.integers(10**6)}-{i}" for i in range(num_docs)]
    corpus = rng.integers(-2, 3, (num_docs, 16)).astype(np.float32)  # small integers: exact scores, many ties
    queries = rng.integers(-2, 3, (num_queries, 16)).astype(np.float32)
    order = retrieval.trec_order(doc_ids)
    ordered = corpus[order]
    split = np.array_split(ordered, blocks) if blocks > 1 else ordered
    miner = candidates.ModelMiner(order, queries, split, retrieval.default_mesh())
    assert miner.mesh.devices.size == 8
    want, scores = brute_force(queries, corpus, doc_ids)
    for k in (1, 10, num_docs, num_docs + 9):
        rows, got_scores, complete = miner.candidates(np.arange(num_queries), k)
        found = min(k, num_docs)
        np.testing.assert_array_equal(rows[:, :found], want[:, :found])
        assert (rows[:, found:] == -1).all()
        np.testing.assert_array_equal(got_scores[:, :found], np.take_along_axis(scores, want[:, :found], 1))
        assert (complete == (k >= num_docs)).all()
    pairs = rng.integers(0, [num_queries, num_docs], (50, 2))
    np.testing.assert_array_equal(miner.pair_scores(pairs[:, 0], pairs[:, 1]), scores[pairs[:, 0], pairs[:, 1]])


def reference_mine(ranking, eval_set: EvalSet, scores, config: mine.MiningConfig):
    """Plain-Python mining from each query's full ranking [(row, score)], taking every eligible negative."""
    doc_row = {d: i for i, d in enumerate(eval_set.doc_ids)}
    texts = [" ".join(t.split()) for t in eval_set.doc_texts]
    rows, counts = [], {"considered": 0, "known_positive": 0, "duplicate_text": 0, "score_ratio": 0}
    for q, qid in enumerate(eval_set.query_ids):
        relevant = [doc_row[d] for d, r in eval_set.qrels.get(qid, {}).items() if r > 0]
        for positive in relevant:
            kept = []
            for row, score in ranking[q]:
                if len(kept) == config.rank_high:
                    break
                counts["considered"] += 1
                if row in relevant:
                    counts["known_positive"] += 1
                elif texts[row] in {texts[r] for r in relevant}:
                    counts["duplicate_text"] += 1
                elif config.max_score_ratio is not None and score > config.max_score_ratio * scores(q, positive):
                    counts["score_ratio"] += 1
                else:
                    kept.append(row)
            rows.append((qid, eval_set.doc_ids[positive], [eval_set.doc_ids[r] for r in kept[config.rank_low - 1 :]]))
    return rows, counts


def assert_mined_like(mined, summary, expected_rows, expected_counts):
    got = list(zip(mined.query_ids, mined.positive_ids, mined.negative_ids))
    assert got == expected_rows
    assert summary["candidates_considered"] == expected_counts["considered"]
    assert summary["dropped"] == {k: expected_counts[k] for k in ("known_positive", "duplicate_text", "score_ratio")}


def test_bm25_mining_matches_a_plain_reference_with_planted_false_negatives(monkeypatch):
    # q0 has two relevant documents and one judged non-relevant; doc21 is doc07's text; doc31 is
    # doc07's text with other whitespace; doc32 nearly doc07, scoring above 0.9 x its score.
    corpus = {**CORPUS, "doc31": "The  red fox\thunts at night. ", "doc32": "The red fox hunts at night and fox day."}
    qrels = {"q0": {"doc07": 1, "doc30": 2, "doc12": 0}, "q1": {"doc11": 1}, "q4": {"doc15": 1},
             "q7": {"doc09": 1}, "q5": {"doc01": 1}}
    eval_set = EvalSet([f"q{i}" for i in range(len(QUERIES))], QUERIES, list(corpus), list(corpus.values()), qrels)
    miner = candidates.Bm25Miner(eval_set)
    ids, full = list(corpus), miner.candidates(np.arange(len(QUERIES)), len(corpus))
    ranking = [[(r, s) for r, s in zip(rows, scores) if r >= 0] for rows, scores in zip(*full[:2])]
    monkeypatch.setattr(mine, "MARGIN", 0)  # rows fetch their queries again, deeper
    config = mine.MiningConfig(num_negatives=100, rank_low=1, rank_high=6, max_score_ratio=0.9)
    mined, summary = mine.mine(eval_set, miner, config)
    expected_rows, expected_counts = reference_mine(
        ranking, eval_set, lambda q, d: miner.pair_scores([q], [d])[0], config)
    assert_mined_like(mined, summary, expected_rows, expected_counts)
    q0 = [negatives for q, _, negatives in expected_rows if q == "q0"]
    assert all({"doc07", "doc30", "doc21", "doc31", "doc32"}.isdisjoint(n) for n in q0)
    assert expected_counts["duplicate_text"] >= 4 and expected_counts["score_ratio"] >= 1
    assert "doc12" in q0[0] + q0[1]  # judged non-relevant (0) is a fine negative
    assert {ids[r] for r, _ in ranking[0][:4]} == {"doc32", "doc31", "doc21", "doc07"}  # planted on top


def planted_set():
    """Designed embeddings: the score of document d for query q is embedding[d][q]."""
    docs = {  # id: (text, score for q0, for q1, for q2)
        "near1": ("Solar panels convert sunlight into electricity efficiently today.", 0.890625, 0, 0),
        "near2": ("Solar panels convert sunlight to electricity.", 0.875, 0, 0),
        "pos0a": ("Solar panels convert sunlight into electricity.", 0.859375, 0, 0),
        "dup0": ("Solar panels  convert sunlight\ninto electricity. ", 0.84375, 0, 0),
        "pos0b": ("Photovoltaic cells turn light into power.", 0.828125, 0, 0),
        "judged0": ("Wind turbines also make electricity.", 0.8125, 0, 0),
        "pos1": ("The Nile is the longest river.", 0, 0.5, 0),
        "pos2": ("Mount Everest is the highest mountain.", 0, 0, 0.25),
        **{f"d{i}": (f"Distractor passage number {i}.", 0.796875 - i / 64, 0.75 if i < 8 else 0.25 + i / 128, 0.5)
           for i in range(1, 13)},
    }
    qrels = {"q0": {"pos0a": 1, "pos0b": 2, "judged0": 0}, "q1": {"pos1": 1}, "q2": {"pos2": 1}}
    eval_set = EvalSet(["q0", "q1", "q2"], ["solar power", "longest river", "highest mountain"], list(docs),
                       [t for t, *_ in docs.values()], qrels)
    corpus = np.array([[*s, 0] for _, *s in docs.values()], np.float32)
    return eval_set, np.eye(3, 4, dtype=np.float32), corpus


def test_planted_false_negatives_never_appear_and_every_drop_is_counted(monkeypatch):
    eval_set, queries, corpus = planted_set()
    order = retrieval.trec_order(eval_set.doc_ids)
    miner = candidates.ModelMiner(order, queries, corpus[order], retrieval.default_mesh())
    monkeypatch.setattr(mine, "MARGIN", 0)
    config = mine.MiningConfig(num_negatives=5, rank_low=1, rank_high=5, max_score_ratio=0.95)
    mined, summary = mine.mine(eval_set, miner, config)
    rows = {(q, p): n for q, p, n in zip(mined.query_ids, mined.positive_ids, mined.negative_ids)}
    # q0/pos0a (limit 0.816): near1, near2 over the ratio, pos0a and pos0b known, dup0 is pos0a's text;
    # judged0 (relevance 0) is a negative like any other.
    assert rows[("q0", "pos0a")] == ["judged0", "d1", "d2", "d3", "d4"]
    # q0/pos0b (limit 0.787): judged0 (0.8125) is over the ratio too; d1 (0.781) is not.
    assert rows[("q0", "pos0b")] == ["d1", "d2", "d3", "d4", "d5"]
    # q1 (limit 0.475): d1..d7 score 0.75, d8..d12 0.3125..0.34375: those five are left, best first.
    assert rows[("q1", "pos1")] == ["d12", "d11", "d10", "d9", "d8"]
    # q2 (limit 0.2375): every d scores 0.5; the passages scoring 0 are left (ties: descending id).
    assert rows[("q2", "pos2")] == ["pos1", "pos0b", "pos0a", "near2", "near1"]
    assert summary["dropped"] == {"known_positive": 2 + 2 + 1 + 1, "duplicate_text": 1 + 1,
                                  "score_ratio": 2 + 3 + 7 + 12}
    assert summary["candidates_considered"] == 10 + 11 + 13 + 18
    assert (summary["rows_with_fewer"], summary["rows_with_none"], summary["rows_depth_limited"]) == (0, 0, 0)

    # Without the ratio rule, ranks 15-20 of q0's 17 kept candidates (q1, q2: 19) leave every row short.
    config = mine.MiningConfig(num_negatives=6, rank_low=15, rank_high=20)
    mined, summary = mine.mine(eval_set, miner, config)
    assert summary["dropped"] == {"known_positive": 6, "duplicate_text": 2, "score_ratio": 0}
    assert mined.negative_ids[0] == ["d12", "pos2", "pos1"]
    assert [len(n) for n in mined.negative_ids] == [3, 3, 5, 5]
    assert (summary["rows_with_fewer"], summary["queries_with_fewer"], summary["rows_with_none"]) == (4, 3, 0)


def test_the_draw_is_uniform_in_rank_order_and_independent_of_fetching(monkeypatch):
    rng = np.random.default_rng(1)
    num_docs, num_queries = 40, 600
    doc_ids = [f"d{i:03d}" for i in range(num_docs)]
    eval_set = EvalSet([f"q{i}" for i in range(num_queries)], ["q"] * num_queries, doc_ids,
                       [f"passage {i}" for i in range(num_docs)], {f"q{i}": {f"d{i % num_docs:03d}": 1}
                                                                  for i in range(num_queries)})
    queries = rng.normal(size=(num_queries, 8)).astype(np.float32)
    corpus = rng.normal(size=(num_docs, 8)).astype(np.float32)
    order = retrieval.trec_order(doc_ids)
    miner = candidates.ModelMiner(order, queries, corpus[order], retrieval.default_mesh())
    config = mine.MiningConfig(num_negatives=3, rank_low=4, rank_high=13, seed=7)
    mined, _ = mine.mine(eval_set, miner, config)
    ranked, _ = brute_force(queries, corpus, doc_ids)
    picks = np.zeros(10, int)
    for q, negatives in enumerate(mined.negative_ids):
        kept = [doc_ids[r] for r in ranked[q] if r != q % num_docs]
        positions = [kept.index(n) for n in negatives]
        assert len(negatives) == 3 and positions == sorted(positions) and min(positions) >= 3 and max(positions) < 13
        picks[np.asarray(positions) - 3] += 1
    # 1800 draws over 10 ranks: 180 each, binomial std 12.7.
    assert np.abs(picks - 180).max() < 60, picks
    # The same rows whatever the chunking and the first fetch's depth; another seed draws others.
    monkeypatch.setattr(mine, "MARGIN", 0)
    again, _ = mine.mine(eval_set, miner, mine.MiningConfig(num_negatives=3, rank_low=4, rank_high=13, seed=7,
                                                             query_chunk=7))
    assert again.negative_ids == mined.negative_ids
    other, _ = mine.mine(eval_set, miner, mine.MiningConfig(num_negatives=3, rank_low=4, rank_high=13, seed=8))
    assert sum(a != b for a, b in zip(other.negative_ids, mined.negative_ids)) > num_queries // 2


def test_text_groups_normalize_whitespace_and_survive_hash_collisions(monkeypatch):
    texts = ["a b", " a  b\n", "a\tb ", "A b", "a b c", "a\u00a0b", "ab"]
    want = [0, 0, 0, 1, 2, 0, 3]  # \u00a0 is whitespace to str.split
    for collide in (False, True):
        if collide:
            monkeypatch.setattr(filters, "hash", lambda text: 42, raising=False)
        groups = filters.text_groups(texts)
        assert [(groups == groups[i]).tolist() for i in range(len(texts))] == \
            [[want[j] == want[i] for j in range(len(texts))] for i in range(len(texts))]


def run_cli(*argv):
    """`gtr-jax mine --quiet ARGV`, leaving gin's config (which --task parses) unlocked and empty."""
    try:
        return cli.main(["mine", "--quiet", *argv])
    finally:
        gin.clear_config()


def test_msmarco_train_mines_to_qidpidtriples(tmp_path, capsys):
    directory = write_msmarco(str(tmp_path / "msmarco"))
    output = tmp_path / "negatives.tsv"
    assert run_cli("--task=msmarco_train_pairs", f"--gin.MSMARCO_DIR={directory}", "--miner=bm25",
                   "--num_negatives=2", f"--output={output}") == 0
    mined = read_negatives(str(output))
    # Query 11's passage is the only one on the Eiffel tower: its row has no negatives, and so no
    # qidpidtriples line. Query 12's relevant passage is 2; passage 3 is judged 0: a fine negative.
    assert list(zip(mined.query_ids, mined.positive_ids)) == [("10", "0"), ("12", "2")]
    assert mined.negative_ids == [["2"], ["3", "0"]]
    summary = json.loads((tmp_path / "negatives.tsv.summary.json").read_text())
    assert (summary["rows"], summary["rows_with_none"], summary["format"]) == (3, 1, "qidpidtriples")
    assert "mined 3 rows (3 queries) over 4 passages with bm25" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--rank_range=5"], "--rank_range '5': expected LO:HI"),
    (["--rank_range=a:b"], "--rank_range 'a:b': expected LO:HI"),
    (["--rank_range=10:5"], "--rank_range 10:5: need 1 <= LO <= HI"),
    (["--rank_range=0:5"], "--rank_range 0:5: need 1 <= LO <= HI"),
    (["--num_negatives=0"], "--num_negatives must be at least 1"),
    (["--max_score_ratio=-1"], "--max_score_ratio must be a positive number"),
    (["--miner=model"], "--miner=model needs --model_dir"),
    (["--model_dir=/nowhere"], "--model_dir: only with --miner=model"),
    (["--miner=model", "--model_dir=/nowhere/model"], "/nowhere/model: no such model directory"),
    (["--split=test", "--task=demo_train"], "--split goes with --beir_dir"),
])
def test_mistakes_are_one_line_and_leave_no_output(tmp_path, capsys, flags, message):
    from retrieval_case import write_demo_beir

    beir_dir = write_demo_beir(str(tmp_path / "beir"), num_queries=6, num_distractors=4)
    argv = [f"--output={tmp_path / 'negatives.jsonl'}", *flags]
    if not any(f.startswith("--miner") for f in flags):
        argv.append("--miner=bm25")
    if not any(f.startswith("--task") for f in flags):
        argv += [f"--beir_dir={beir_dir}", "--split=test"]
    assert run_cli(*argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert os.listdir(tmp_path) == ["beir"]


def test_triples_output_of_non_integer_ids_fails_before_mining(tmp_path, capsys, monkeypatch):
    from retrieval_case import write_demo_beir

    from gtr_jax.mining import mine

    beir_dir = write_demo_beir(str(tmp_path / "beir"), num_queries=6, num_distractors=4)
    monkeypatch.setattr(mine, "mine", lambda *a, **k: pytest.fail("mined before checking the ids"))
    assert run_cli(f"--beir_dir={beir_dir}", "--split=test", "--miner=bm25",
                   f"--output={tmp_path / 'negatives.tsv'}") == 1
    err = capsys.readouterr().err.strip()
    assert "qidpidtriples format needs non-negative integer ids" in err and len(err.splitlines()) == 1, err
    assert os.listdir(tmp_path) == ["beir"]


@pytest.mark.parametrize("output, message", [
    ("negatives.txt.json.xml", "unknown negatives file format"),
    ("missing/negatives.jsonl", "output directory does not exist"),
])
def test_bad_outputs_are_one_line(tmp_path, capsys, output, message):
    assert run_cli("--beir_dir=/nowhere", "--miner=bm25", f"--output={tmp_path / output}") == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert os.listdir(tmp_path) == []
