"""Ranking metrics equal to trec_eval's, computed for all queries at once with numpy.

trec_eval is the oracle, and these are its definitions (relevant = relevance ≥ 1):
  * a query's run is ranked by score descending, ties broken by document id descending
    (byte order of the ids); the rank column of a run file is ignored;
  * queries are those in both the run and the qrels; a query whose judgments are all
    below 1 counts, with every measure 0;
  * recip_rank = 1 / rank of the first relevant document, without cutoff (0 if none);
    mrr_k (not a trec_eval name) is recip_rank counted only when that rank is ≤ k;
  * P_k = relevant in the top k / k, even when fewer than k were retrieved;
  * recall_k = relevant in the top k / relevant judged (0 when none are);
  * ndcg_cut_k = DCG@k / ideal DCG@k with gain = relevance (negative as 0) and
    discount log2(rank + 1); ndcg is the uncut version;
  * map_cut_k = Σ over relevant documents in the top k of precision at their rank,
    / relevant judged; map is the uncut version.
`gtr-jax metrics --qrels=F --run=F` prints the averages over queries as one JSON object.
"""

import dataclasses
import json
import re

import numpy as np
from etils import epath

from gtr_jax.errors import UserError, at_line
from gtr_jax.data.text_files import read_bytes

DEFAULT_MEASURES = (
    "recip_rank", "mrr_10", "P_1", "P_10", "recall_1", "recall_10", "recall_100", "recall_1000",
    "ndcg_cut_10", "ndcg_cut_100", "map_cut_100", "map",
)
_MEASURE = re.compile(r"^(recip_rank|ndcg|map)$|^(mrr|P|recall|ndcg_cut|map_cut)_([1-9][0-9]*)$")
BEIR_QRELS_HEADER = "query-id\tcorpus-id\tscore"


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


def _codes(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """Position of each value in the sorted vocabulary (every value must be in it)."""
    return np.searchsorted(vocabulary, values)


def _within_group_position(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted group array."""
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    lengths = np.diff(np.r_[starts, len(group)])
    return np.arange(len(group)) - np.repeat(starts, lengths)


def per_query(qrels: dict[str, dict[str, int]], run: Run, measures=DEFAULT_MEASURES) -> tuple[np.ndarray, dict]:
    """(query ids, {measure: float64 [num_queries]}) for the queries both in the run and the qrels."""
    parsed = {m: parse_measure(m) for m in measures}
    if not qrels:
        raise UserError("the qrels hold no judgments")
    judged_q = np.asarray([q for q, docs in qrels.items() for _ in docs])
    judged_d = np.asarray([d for docs in qrels.values() for d in docs])
    judged_rel = np.asarray([r for docs in qrels.values() for r in docs.values()], np.int64)
    queries = np.intersect1d(run.query_ids, judged_q)
    if not len(queries):
        raise UserError(f"{run.path or 'the run'}: none of its queries has judgments in the qrels")
    in_run = np.isin(run.query_ids, queries)
    in_qrels = np.isin(judged_q, queries)
    documents = np.unique(np.concatenate([run.doc_ids[in_run], judged_d[in_qrels]]))
    n_docs = len(documents)

    # Run rows ranked as trec_eval does: query, then score descending, then doc id descending.
    r_query = _codes(run.query_ids[in_run], queries)
    r_doc = _codes(run.doc_ids[in_run], documents)
    r_score = run.scores[in_run]
    order = np.lexsort((-r_doc, -r_score, r_query))
    r_query, r_doc = r_query[order], r_doc[order]
    r_key = r_query.astype(np.int64) * n_docs + r_doc
    duplicate = np.flatnonzero(np.r_[False, r_key[1:] == r_key[:-1]])
    if len(duplicate):
        raise _duplicate_error(run, np.flatnonzero(in_run)[order], duplicate[0])
    rank = _within_group_position(r_query)

    # Judgments, looked up by (query, doc) key.
    j_query = _codes(judged_q[in_qrels], queries)
    j_key = j_query.astype(np.int64) * n_docs + _codes(judged_d[in_qrels], documents)
    j_rel = judged_rel[in_qrels]
    by_key = np.argsort(j_key)
    at = np.minimum(np.searchsorted(j_key, r_key, sorter=by_key), len(j_key) - 1)
    found = j_key[by_key[at]] == r_key
    rel = np.where(found, j_rel[by_key[at]], 0)
    relevant = rel >= 1
    gain = np.maximum(rel, 0).astype(np.float64)
    n_q = len(queries)
    num_rel = np.bincount(j_query, weights=j_rel >= 1, minlength=n_q)

    first = np.full(n_q, np.inf)
    with_relevant, first_row = np.unique(r_query[relevant], return_index=True)
    first[with_relevant] = rank[relevant][first_row]
    # Relevant documents at or above each row of the same query: for average precision.
    cumulative = np.cumsum(relevant)
    query_start = np.searchsorted(r_query, r_query)
    relevant_so_far = cumulative - np.where(query_start > 0, cumulative[query_start - 1], 0)
    # The ideal ranking: each query's judged gains, largest first.
    j_gain = np.maximum(j_rel, 0).astype(np.float64)
    ideal = np.lexsort((-j_gain, j_query))
    ideal_query, ideal_gain = j_query[ideal], j_gain[ideal]
    ideal_rank = _within_group_position(ideal_query)

    def total(weights, rows=r_query):
        return np.bincount(rows, weights=weights, minlength=n_q)

    def ratio(numerator, denominator):
        return np.divide(numerator, denominator, out=np.zeros(n_q), where=denominator > 0)

    results = {}
    for name, (family, k) in parsed.items():
        cut = rank < k if k else np.ones(len(rank), bool)
        if family == "recip_rank":
            results[name] = np.where(np.isfinite(first), 1.0 / (first + 1), 0.0)
        elif family == "mrr":
            results[name] = np.where(first < k, 1.0 / (first + 1), 0.0)
        elif family == "P":
            results[name] = total(relevant & cut) / k
        elif family == "recall":
            results[name] = ratio(total(relevant & cut), num_rel)
        elif family in ("ndcg", "ndcg_cut"):
            dcg = total(np.where(cut, gain / np.log2(rank + 2.0), 0.0))
            ideal_cut = ideal_rank < k if k else np.ones(len(ideal_rank), bool)
            idcg = total(np.where(ideal_cut, ideal_gain / np.log2(ideal_rank + 2.0), 0.0), ideal_query)
            results[name] = ratio(dcg, idcg)
        else:  # map, map_cut
            precision = np.where(relevant & cut, relevant_so_far / (rank + 1.0), 0.0)
            results[name] = ratio(total(precision), num_rel)
    return queries, results


def _duplicate_error(run: Run, rows: np.ndarray, second: int) -> UserError:
    """The error for a document retrieved twice (sorted rows second - 1 and second), naming the later line."""
    row = max(rows[second], rows[second - 1])
    problem = f"document {run.doc_ids[row]} appears twice for query {run.query_ids[row]}"
    if run.line_numbers is not None:
        return at_line(run.path, int(run.line_numbers[row]), problem)
    return UserError(problem)


def evaluate(qrels: dict[str, dict[str, int]], run: Run, measures=DEFAULT_MEASURES) -> dict:
    """Mean of each measure over the evaluated queries, plus num_q (their count)."""
    queries, values = per_query(qrels, run, measures)
    return {"num_q": len(queries), **{name: float(np.mean(v)) for name, v in values.items()}}


def _metrics_command(args):
    """Score a TREC run file against qrels; print one JSON object."""
    measures = tuple(m.strip() for m in args.measures.split(",") if m.strip()) if args.measures else DEFAULT_MEASURES
    for name in measures:
        parse_measure(name)
    qrels, run = read_qrels(args.qrels), read_run(args.run_file)
    if args.per_query:
        queries, values = per_query(qrels, run, measures)
        result = {q: {m: float(values[m][i]) for m in measures} for i, q in enumerate(queries.tolist())}
    else:
        result = evaluate(qrels, run, measures)
    print(json.dumps(result, indent=2))


def add_metrics_parser(commands):
    """The `metrics` subcommand."""
    parser = commands.add_parser("metrics", help="trec_eval-equal scores of a TREC run file")
    parser.add_argument("--qrels", required=True, help="TREC qrels (qid iter docid rel) or a BEIR qrels TSV")
    parser.add_argument("--run", dest="run_file", required=True, help="TREC run: qid Q0 docid rank score tag")
    parser.add_argument("--measures", help=f"comma-separated trec_eval names (default: {','.join(DEFAULT_MEASURES)})")
    parser.add_argument("--per_query", action="store_true", help="one object per query instead of the averages")
    parser.set_defaults(run=_metrics_command)
