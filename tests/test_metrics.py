"""trec_eval-equal metrics, checked against pytrec_eval (trec_eval itself) on tie-heavy random runs."""

import json
import re

import numpy as np
import pytest
import pytrec_eval

from gtr_jax.cli import main as cli
from gtr_jax.eval import metrics
from gtr_jax.errors import UserError

CUTOFFS = (1, 3, 10, 100)
MEASURES = ("recip_rank", "ndcg", "map") + tuple(
    f"{family}_{k}" for family in ("mrr", "P", "recall", "ndcg_cut", "map_cut") for k in CUTOFFS
)
# Ids whose byte order differs from their numeric order, and non-ASCII ones: the tie-break is by bytes.
DOC_IDS = [f"d{i}" for i in range(30)] + ["9", "10", "100", "a", "B", "é", "ü2", "z"]


def random_case(seed, num_queries=80):
    """qrels and a run with many tied scores, graded and negative relevance, unjudged and unranked queries."""
    rng = np.random.default_rng(seed)
    qrels, run = {}, {}
    for q in range(num_queries):
        qid = f"q{q}"
        if q % 10 != 9:  # every tenth query is retrieved but never judged
            judged = rng.choice(DOC_IDS, size=rng.integers(1, 12), replace=False)
            levels = [-1, 0, 0, 1, 2, 3] if q % 7 else [-1, 0]  # every seventh has no relevant document
            qrels[qid] = {str(d): int(rng.choice(levels)) for d in judged}
        if q % 13 != 12:  # and every thirteenth is judged but not retrieved
            retrieved = rng.choice(DOC_IDS, size=rng.integers(1, len(DOC_IDS)), replace=False)
            # Scores from a handful of values: most documents share their score with others.
            run[qid] = {str(d): float(rng.integers(0, 5)) / 4 for d in retrieved}
    return qrels, run


def pytrec_name(measure):
    family, k = metrics.parse_measure(measure)
    return family if k is None else f"{family}.{k}"


def reference(qrels, run, measures):
    """Per-query values from pytrec_eval; mrr_k from its recip_rank (first relevant rank ≤ k ⇔ 1/rank ≥ 1/k)."""
    asked = {pytrec_name(m) for m in measures if not m.startswith("mrr_")} | {"recip_rank"}
    results = pytrec_eval.RelevanceEvaluator(qrels, asked).evaluate(run)
    out = {}
    for q, values in results.items():
        out[q] = {}
        for m in measures:
            family, k = metrics.parse_measure(m)
            rr = values["recip_rank"]
            out[q][m] = (rr if rr >= 1.0 / k else 0.0) if family == "mrr" else values[m]
    return out


def as_run(run_dict):
    rows = [(q, d, s) for q, docs in run_dict.items() for d, s in docs.items()]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]  # the file order must not matter
    return metrics.Run(*(np.asarray(column) for column in zip(*rows)))


@pytest.mark.parametrize("seed", range(5))
def test_per_query_values_equal_trec_eval(seed):
    qrels, run = random_case(seed)
    expected = reference(qrels, run, MEASURES)
    queries, values = metrics.per_query(qrels, as_run(run), MEASURES)
    assert sorted(queries.tolist()) == sorted(expected)
    for i, q in enumerate(queries.tolist()):
        for m in MEASURES:
            assert values[m][i] == pytest.approx(expected[q][m], abs=1e-9, rel=0), (q, m)


def test_ties_are_broken_by_doc_id_descending():
    qrels = {"q": {"10": 1}}
    # All tied: by bytes, descending, "9" > "100" > "10", so "10" is third (numerically it would be second).
    run = metrics.Run(np.asarray(["q"] * 3), np.asarray(["10", "100", "9"]), np.asarray([0.5, 0.5, 0.5]))
    assert metrics.evaluate(qrels, run, ["recip_rank", "P_1"]) == {"num_q": 1, "recip_rank": 1 / 3, "P_1": 0.0}
    trec_eval = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate({"q": {"10": 0.5, "100": 0.5, "9": 0.5}})
    assert trec_eval["q"]["recip_rank"] == 1 / 3


def write_files(tmp_path, qrels, run, beir_qrels=False):
    qrels_file, run_file = tmp_path / "qrels.txt", tmp_path / "run.txt"
    if beir_qrels:
        judgments = [f"{q}\t{d}\t{r}" for q, docs in qrels.items() for d, r in docs.items()]
        lines = ["query-id\tcorpus-id\tscore"] + judgments
    else:
        lines = [f"{q} 0 {d} {r}" for q, docs in qrels.items() for d, r in docs.items()]
    qrels_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_lines = [f"{q} Q0 {d} {rank} {s!r} tag" for q, docs in run.items() for rank, (d, s) in enumerate(docs.items())]
    run_file.write_text("\n".join(run_lines) + "\n", encoding="utf-8")
    return qrels_file, run_file


@pytest.mark.parametrize("beir_qrels", [False, True])
def test_cli_prints_trec_eval_averages(tmp_path, capsys, beir_qrels):
    qrels, run = random_case(11)
    qrels_file, run_file = write_files(tmp_path, qrels, run, beir_qrels)
    assert cli.main(["metrics", f"--qrels={qrels_file}", f"--run={run_file}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = reference(qrels, run, metrics.DEFAULT_MEASURES)
    assert printed["num_q"] == len(expected)
    for m in metrics.DEFAULT_MEASURES:
        assert printed[m] == pytest.approx(np.mean([v[m] for v in expected.values()]), abs=1e-9, rel=0), m


def test_cli_per_query_and_chosen_measures(tmp_path, capsys):
    qrels, run = random_case(12)
    qrels_file, run_file = write_files(tmp_path, qrels, run)
    assert cli.main(["metrics", f"--qrels={qrels_file}", f"--run={run_file}", "--measures=P_3,ndcg_cut_5",
                     "--per_query"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = reference(qrels, run, ["P_3", "ndcg_cut_5"])
    assert printed.keys() == expected.keys()
    for q in expected:
        assert printed[q] == pytest.approx(expected[q], abs=1e-9, rel=0)


def test_write_run_reads_back_the_same_ranking(tmp_path):
    rng = np.random.default_rng(3)
    scores = np.sort(rng.normal(size=(4, 6)).astype(np.float32), axis=1)[:, ::-1]
    scores[:, 2] = scores[:, 3]  # a float32 tie must survive the text round trip
    doc_ids = np.asarray([[f"d{j}" for j in (5, 4, 3, 2, 1, 0)]] * 4)
    metrics.write_run(str(tmp_path / "run"), ["a", "b", "c", "d"], doc_ids, scores)
    back = metrics.read_run(str(tmp_path / "run"))
    np.testing.assert_array_equal(back.scores, scores.astype(np.float64).reshape(-1))
    np.testing.assert_array_equal(back.doc_ids, doc_ids.reshape(-1))
    with pytest.raises(UserError, match="id 'a b' is empty or has whitespace"):
        metrics.write_run(str(tmp_path / "bad"), ["a b"], doc_ids[:1], scores[:1])


@pytest.mark.parametrize(
    "which, content, message",
    [
        ("run", "q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4\n", r"run\.txt:2: expected 'qid Q0 docid rank score tag'"),
        ("run", "q1 Q0 d1 1 high t\n", r"run\.txt:1: score 'high' is not a number"),
        ("run", "q1 Q0 d1 1 nan t\n", r"run\.txt:1: score is NaN"),
        ("run", "q1 Q0 d1 1 0.5 t\n\nq1 Q0 d1 2 0.4 t\n", r"run\.txt:3: document d1 appears twice for query q1"),
        ("run", b"q1 Q0 d\xe91 1 0.5 t\n", r"run\.txt:1: not valid UTF-8"),
        ("run", "", r"run\.txt: no results"),
        ("qrels", "q1 0 d1\n", r"qrels\.txt:1: expected 'qid iter docid relevance'"),
        ("qrels", "query-id\tcorpus-id\tscore\nq1 0 d1 1\n", r"qrels\.txt:2: expected 'query-id corpus-id score'"),
        ("qrels", "q1 0 d1 yes\n", r"qrels\.txt:1: relevance 'yes' is not an integer"),
        ("qrels", "q1 0 d1 1\nq1 0 d1 0\n", r"qrels\.txt:2: document d1 is judged twice for query q1"),
        ("qrels", "q9 0 d1 1\n", r"run\.txt: none of its queries has judgments"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, capsys, which, content, message):
    qrels_file, run_file = write_files(tmp_path, {"q1": {"d1": 1}}, {"q1": {"d1": 0.5}})
    target = run_file if which == "run" else qrels_file
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert cli.main(["metrics", f"--qrels={qrels_file}", f"--run={run_file}"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_missing_file_and_unknown_measure(tmp_path, capsys):
    qrels_file, run_file = write_files(tmp_path, {"q1": {"d1": 1}}, {"q1": {"d1": 0.5}})
    assert cli.main(["metrics", f"--qrels={tmp_path / 'nope'}", f"--run={run_file}"]) == 1
    assert "nope: no such file" in capsys.readouterr().err
    assert cli.main(["metrics", f"--qrels={qrels_file}", f"--run={run_file}", "--measures=ndcg@10"]) == 1
    assert "unknown measure 'ndcg@10'" in capsys.readouterr().err


def test_scores_equal_in_float32_are_tied_as_in_trec_eval():
    # trec_eval keeps scores as C floats: 1 + 5e-8 rounds to 1.0 there, so the tie goes to "b" (doc id descending).
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0 + 5e-8, "b": 1.0}}
    trec_eval = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    assert trec_eval["q"]["recip_rank"] == 0.5
    assert metrics.evaluate(qrels, as_run(run), ["recip_rank", "mrr_1"]) == {"num_q": 1, "recip_rank": 0.5, "mrr_1": 0.0}


def test_long_runs_are_not_cut_at_1000():
    run = metrics.Run.from_ranking(["q"], [[f"d{i:05d}" for i in range(1500)]], [np.arange(1500.0)[::-1]])
    values = metrics.evaluate({"q": {"d01199": 1}}, run, ["recip_rank", "recall_1000", "recall_1500", "map"])
    assert values == {"num_q": 1, "recip_rank": 1 / 1200, "recall_1000": 0.0, "recall_1500": 1.0, "map": 1 / 1200}


def test_evaluated_in_chunks_and_with_numpy_relevance(monkeypatch):
    qrels, run = random_case(7)
    expected = reference(qrels, run, MEASURES)
    monkeypatch.setattr(metrics, "_CHUNK_ROWS", 50)  # many pytrec_eval calls, whose results must all be kept
    numpy_qrels = {q: {d: np.int64(r) for d, r in docs.items()} for q, docs in qrels.items()}
    queries, values = metrics.per_query(numpy_qrels, as_run(run), MEASURES)
    assert queries.tolist() == sorted(expected)
    for i, q in enumerate(queries.tolist()):
        assert {m: values[m][i] for m in MEASURES} == pytest.approx(expected[q], abs=1e-9, rel=0), q


def test_duplicate_in_a_run_whose_queries_interleave_names_its_second_line(tmp_path):
    run_file = tmp_path / "run.txt"
    run_file.write_text("q1 Q0 d1 1 0.9 t\nq2 Q0 d1 1 0.9 t\nq1 Q0 d2 2 0.8 t\nq1 Q0 d1 3 0.7 t\nq1 Q0 d2 4 0.1 t\n")
    with pytest.raises(UserError, match=r"run\.txt:4: document d1 appears twice for query q1"):
        metrics.per_query({"q1": {"d1": 1}, "q2": {"d1": 1}}, metrics.read_run(str(run_file)))
    ranking = metrics.Run.from_ranking(["q"], [["x", "y", "x"]], [[3.0, 2.0, 1.0]])
    with pytest.raises(UserError, match="^document x appears twice for query q$"):
        metrics.per_query({"q": {"x": 1}}, ranking)
