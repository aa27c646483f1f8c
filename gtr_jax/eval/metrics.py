"""Ranking metrics computed by trec_eval's own code (pytrec_eval), and the run and qrels files they read.

The definitions are trec_eval's (relevant = relevance ≥ 1):
  * a query's run is ranked by score descending, ties broken by document id descending
    (byte order of the ids); trec_eval holds scores as single-precision floats, so scores
    equal in float32 are tied; the rank column of a run file is ignored;
  * queries are those in both the run and the qrels (trec_eval without -c); a query whose
    judgments are all below 1 counts, with every measure 0;
  * recip_rank = 1 / rank of the first relevant document, without cutoff (0 if none);
    mrr_k (not a trec_eval name) is recip_rank counted only when that rank is ≤ k, which
    is recip_rank of the run cut at k;
  * P_k = relevant in the top k / k, even when fewer than k were retrieved;
  * recall_k = relevant in the top k / relevant judged (0 when none are);
  * ndcg_cut_k = DCG@k / ideal DCG@k with gain = relevance (negative as 0) and
    discount log2(rank + 1); ndcg is the uncut version;
  * map_cut_k = Σ over relevant documents in the top k of precision at their rank,
    / relevant judged; map is the uncut version.
Measures are named as trec_eval prints them (P_10, ndcg_cut_10), mrr_k aside.
`gtr-jax metrics --qrels=F --run=F` prints the averages over queries as one JSON object.
"""

import dataclasses
import re

import numpy as np
import pytrec_eval
from etils import epath

from gtr_jax.errors import UserError, at_line
from gtr_jax.data.text_files import read_bytes

DEFAULT_MEASURES = (
    "recip_rank", "mrr_10", "P_1", "P_10", "recall_1", "recall_10", "recall_100", "recall_1000",
    "ndcg_cut_10", "ndcg_cut_100", "map_cut_100", "map",
)
_MEASURE = re.compile(r"^(recip_rank|ndcg|map)$|^(mrr|P|recall|ndcg_cut|map_cut)_([1-9][0-9]*)$")
BEIR_QRELS_HEADER = "query-id\tcorpus-id\tscore"
_CHUNK_ROWS = 1 << 20  # run rows handed to pytrec_eval per call


def parse_measure(name: str) -> tuple[str, int | None]:
    """(family, cutoff or None) of a measure name such as 'ndcg_cut_10' or 'recip_rank'."""
    match = _MEASURE.match(name)
    if not match:
        raise UserError(f"unknown measure {name!r}: use recip_rank, ndcg, map, or mrr_K, P_K, recall_K, "
                        "ndcg_cut_K, map_cut_K")
    if match.group(1):
        return match.group(1), None
    return match.group(2), int(match.group(3))


@dataclasses.dataclass
class Run:
    """A retrieval run as aligned flat arrays, one row per (query, retrieved document)."""

    query_ids: np.ndarray  # str [n]
    doc_ids: np.ndarray  # str [n]
    scores: np.ndarray  # float64 [n]
    line_numbers: np.ndarray | None = None  # int [n], rows' lines in the file the run was read from
    path: str | None = None

    @classmethod
    def from_ranking(cls, query_ids, doc_ids, scores) -> "Run":
        """A run of [num_queries, k] doc ids and scores (e.g. a top-k search); "" ids are padding."""
        doc_ids = np.asarray(doc_ids)
        query_ids = np.repeat(np.asarray(query_ids), doc_ids.shape[1])
        doc_ids, scores = doc_ids.reshape(-1), np.asarray(scores, np.float64).reshape(-1)
        present = doc_ids != ""
        return cls(query_ids[present], doc_ids[present], scores[present])


def _split_lines(path: str):
    """(line number, whitespace-split fields) of each non-blank line."""
    for number, raw in enumerate(read_bytes(path).split(b"\n"), start=1):
        try:
            fields = raw.decode("utf-8").split()
        except UnicodeDecodeError as e:
            raise at_line(path, number, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if fields:
            yield number, fields


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """qrels[query id][doc id] = relevance, from TREC qrels (qid iter docid rel) or a BEIR qrels TSV with header."""
    qrels: dict[str, dict[str, int]] = {}
    fields_per_line, form = 4, "'qid iter docid relevance'"
    for number, fields in _split_lines(path):
        if number == 1 and fields == BEIR_QRELS_HEADER.split("\t"):
            fields_per_line, form = 3, "'query-id corpus-id score'"
            continue
        if len(fields) != fields_per_line:
            raise at_line(path, number, f"expected {form} ({fields_per_line} fields), found {len(fields)} fields")
        qid, doc_id, relevance = fields[0], fields[-2], fields[-1]
        try:
            level = int(relevance)
        except ValueError:
            raise at_line(path, number, f"relevance {relevance!r} is not an integer") from None
        judged = qrels.setdefault(qid, {})
        if doc_id in judged:
            raise at_line(path, number, f"document {doc_id} is judged twice for query {qid}")
        judged[doc_id] = level
    if not qrels:
        raise UserError(f"{path}: no judgments")
    return qrels


def read_run(path: str) -> Run:
    """A TREC run file: 'qid Q0 docid rank score tag' per line."""
    query_ids, doc_ids, scores, numbers = [], [], [], []
    for number, fields in _split_lines(path):
        if len(fields) != 6:
            raise at_line(path, number, f"expected 'qid Q0 docid rank score tag' (6 fields), found {len(fields)}")
        try:
            score = float(fields[4])
        except ValueError:
            raise at_line(path, number, f"score {fields[4]!r} is not a number") from None
        if score != score:
            raise at_line(path, number, "score is NaN")
        query_ids.append(fields[0])
        doc_ids.append(fields[2])
        scores.append(score)
        numbers.append(number)
    if not query_ids:
        raise UserError(f"{path}: no results")
    return Run(np.asarray(query_ids), np.asarray(doc_ids), np.asarray(scores, np.float64), np.asarray(numbers), path)


def write_run(path: str, query_ids, doc_ids, scores, tag: str = "gtr_jax"):
    """Write a TREC run of [num_queries, k] doc ids and scores, each row ranked best first ("" ids are padding).

    Scores are written as the shortest decimal that reads back as the same double, so the
    file ranks exactly as the scores it was written from. `path` may be a cloud path (gs://).
    """
    doc_ids = np.asarray(doc_ids)
    for name, ids in (("query", query_ids), ("document", np.unique(doc_ids[doc_ids != ""]))):
        bad = [i for i in ids if not i or any(c.isspace() for c in i)]
        if bad:
            raise UserError(f"{path}: {name} id {bad[0]!r} is empty or has whitespace, which a run file cannot hold")
    with epath.Path(path).open("w") as f:
        for qid, row_ids, row_scores in zip(query_ids, doc_ids, np.asarray(scores, np.float64).tolist()):
            f.write("".join(f"{qid} Q0 {d} {rank} {s!r} {tag}\n"
                            for rank, (d, s) in enumerate(zip(row_ids, row_scores), start=1) if d))


def _trec_eval_request(family: str, k: int | None) -> str:
    """The name pytrec_eval is asked for ('P.10', 'ndcg'); mrr_k is read off recip_rank."""
    if family == "mrr":
        return "recip_rank"
    return family if k is None else f"{family}.{k}"


def _query_rows(query_ids: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(row order or None when already grouped, start of each query's rows in that order).

    Runs are nearly always written query by query, so the sort is only paid when they are not.
    """
    def starts(ids):
        return np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])

    first = starts(query_ids)
    if len(set(query_ids[first].tolist())) == len(first):
        return None, first
    order = np.argsort(query_ids, kind="stable")  # stable: each query's rows stay in file order
    return order, starts(query_ids[order])


def _duplicate_error(run: Run, rows: np.ndarray) -> UserError:
    """The error for a query's rows (in file order) that retrieve a document twice, naming its second line."""
    seen = set()
    for row in rows.tolist():
        if run.doc_ids[row] in seen:
            break
        seen.add(run.doc_ids[row])
    problem = f"document {run.doc_ids[row]} appears twice for query {run.query_ids[row]}"
    if run.line_numbers is not None:
        return at_line(run.path, int(run.line_numbers[row]), problem)
    return UserError(problem)


def per_query(qrels: dict[str, dict[str, int]], run: Run, measures=DEFAULT_MEASURES) -> tuple[np.ndarray, dict]:
    """(query ids, {measure: float64 [num_queries]}) for the queries both in the run and the qrels, sorted."""
    parsed = {m: parse_measure(m) for m in measures}
    judged = {q: docs for q, docs in qrels.items() if docs}
    if not judged:
        raise UserError("the qrels hold no judgments")
    order, starts = _query_rows(run.query_ids)
    doc_ids, scores = (run.doc_ids, run.scores) if order is None else (run.doc_ids[order], run.scores[order])
    ends = np.r_[starts[1:], len(doc_ids)].tolist()
    query_ids = run.query_ids[starts if order is None else order[starts]].tolist()
    spans = [(q, s, e) for q, s, e in zip(query_ids, starts.tolist(), ends) if q in judged]
    if not spans:
        raise UserError(f"{run.path or 'the run'}: none of its queries has judgments in the qrels")
    # pytrec_eval takes only Python ints as relevance.
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: {d: int(r) for d, r in judged[q].items()} for q, _, _ in spans},
        {_trec_eval_request(*p) for p in parsed.values()})
    results, chunk, chunk_rows = {}, {}, 0
    for i, (qid, start, end) in enumerate(spans):
        ranked = dict(zip(doc_ids[start:end].tolist(), scores[start:end].tolist()))
        if len(ranked) < end - start:
            rows = np.arange(start, end) if order is None else order[start:end]
            raise _duplicate_error(run, rows)
        chunk[qid], chunk_rows = ranked, chunk_rows + end - start
        # Evaluated a chunk at a time, so that a long run is never all Python dicts at once.
        if chunk_rows >= _CHUNK_ROWS or i == len(spans) - 1:
            results.update(evaluator.evaluate(chunk))
            chunk, chunk_rows = {}, 0
    queries = sorted(results)
    values = {}
    for name, (family, k) in parsed.items():
        key = "recip_rank" if family == "mrr" else name
        column = np.fromiter((results[q][key] for q in queries), np.float64, len(queries))
        # recip_rank = 1/rank ≥ 1/k exactly when the first relevant document is within the top k.
        values[name] = np.where(column >= 1.0 / k, column, 0.0) if family == "mrr" else column
    return np.asarray(queries), values


def evaluate(qrels: dict[str, dict[str, int]], run: Run, measures=DEFAULT_MEASURES) -> dict:
    """Mean of each measure over the evaluated queries, plus num_q (their count)."""
    queries, values = per_query(qrels, run, measures)
    return {"num_q": len(queries), **{name: float(np.mean(v)) for name, v in values.items()}}
