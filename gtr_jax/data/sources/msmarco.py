"""MS MARCO passage ranking from its official TSV files.

Files (one directory, gin macro MSMARCO_DIR):
  collection.tsv                  pid<TAB>passage                 (8.8M passages)
  queries.{train,dev.small}.tsv   qid<TAB>query
  qrels.{train,dev.small}.tsv     qid<TAB>0<TAB>pid<TAB>relevance (TREC qrels)
  triples.train.small.tsv         query<TAB>positive<TAB>negative (texts)
  qidpidtriples.train.full.2.tsv  qid<TAB>positive pid<TAB>negative pid
Training pairs are the qrels with relevance > 0. A qrels or triples line that names a
qid or pid missing from its queries file or the collection is a bad line of that file.
"""

import dataclasses
import os

import gin
import numpy as np

from gtr_jax.errors import UserError
from gtr_jax.data.examples import Column, EvalSet, Pairs, TableTexts, cached, file_stamp
from gtr_jax.data.text_files import BadLines
from gtr_jax.data.tsv import IdIndex, TsvTable, read_tsv

QRELS_FIELDS = ("qid", "iteration", "pid", "relevance")


@gin.configurable
def msmarco_dir(directory: str | None = None) -> str:
    """The MS MARCO passage directory; gin: `msmarco_dir.directory = %MSMARCO_DIR`."""
    if not directory:
        raise UserError("the MS MARCO directory is not set: set MSMARCO_DIR (msmarco_dir.directory) in gin")
    return directory


@dataclasses.dataclass
class _IdTexts:
    """A queries file or the collection: the table, its id index and id/text field names."""

    table: TsvTable
    index: IdIndex
    id_field: str
    text_field: str

    def column(self) -> Column:
        """All rows (each id once) as ids and texts."""
        rows = self.index.unique_rows
        return Column(TableTexts(self.table, self.id_field, rows), TableTexts(self.table, self.text_field, rows))

    def unknown(self, ids: np.ndarray, field: str) -> tuple[np.ndarray, dict[int, str]]:
        """(row of each id or -1, {position: problem} for the unknown ones)."""
        found = self.index.rows(ids)
        source = os.path.basename(self.table.path)
        return found, {int(i): f"{field} {ids[i]} is not in {source}" for i in np.flatnonzero(found < 0)}


def _reject_lines(table: TsvTable, *problem_maps: dict[int, str], bad: BadLines) -> None:
    """Report each row's first problem, in file order, as a bad line of `table`."""
    problems: dict[int, str] = {}
    for problem_map in problem_maps:
        for row, detail in problem_map.items():
            problems.setdefault(row, detail)
    for row in sorted(problems):
        bad.reject(table.path, int(table.line_numbers(row)), "unknown id", problems[row])


def _id_texts(path: str, id_field: str, text_field: str, bad: BadLines) -> _IdTexts:
    def load():
        table = read_tsv(path, (id_field, text_field), int_fields=(id_field,), bad=bad)
        return _IdTexts(table, IdIndex(table, id_field, bad), id_field, text_field)

    # The collection is shared by every MS MARCO task: read and index it once per process.
    return cached(("msmarco", file_stamp(path), bad.policy), load)


def _judged(directory: str, split: str, bad: BadLines):
    """(queries, collection, qrels table, query rows, passage rows, known mask) of a qrels file."""
    queries = _id_texts(os.path.join(directory, f"queries.{split}.tsv"), "qid", "query", bad)
    collection = _id_texts(os.path.join(directory, "collection.tsv"), "pid", "passage", bad)
    qrels = read_tsv(os.path.join(directory, f"qrels.{split}.tsv"), QRELS_FIELDS, int_fields=QRELS_FIELDS, bad=bad)
    q, unknown_q = queries.unknown(qrels.ints["qid"], "qid")
    p, unknown_p = collection.unknown(qrels.ints["pid"], "pid")
    _reject_lines(qrels, unknown_q, unknown_p, bad=bad)
    return queries, collection, qrels, q, p, (q >= 0) & (p >= 0)


def _qrels_pairs(directory: str, split: str, bad_lines: str | None) -> Pairs:
    bad = BadLines(bad_lines)
    queries, collection, qrels, q, p, known = _judged(directory, split, bad)
    bad.report(f"MS MARCO {split} pairs")
    keep = known & (qrels.ints["relevance"] > 0)
    return Pairs(queries.column(), collection.column(), *_positions(queries, collection, q[keep], p[keep]))


def _positions(queries: _IdTexts, collection: _IdTexts, q: np.ndarray, p: np.ndarray):
    """Table rows -> positions in the columns (which hold each id's first row, in file order)."""
    return (np.searchsorted(queries.index.unique_rows, q), np.searchsorted(collection.index.unique_rows, p))


def train_pairs(directory: str | None = None, bad_lines: str | None = None) -> Pairs:
    """(query, relevant passage) for each qrels.train.tsv line with relevance > 0."""
    return _qrels_pairs(directory or msmarco_dir(), "train", bad_lines)


def dev_pairs(directory: str | None = None, bad_lines: str | None = None) -> Pairs:
    """(query, relevant passage) for each qrels.dev.small.tsv line with relevance > 0."""
    return _qrels_pairs(directory or msmarco_dir(), "dev.small", bad_lines)


def train_triples(directory: str | None = None, bad_lines: str | None = None) -> Pairs:
    """(query, positive, one hard negative) texts of triples.train.small.tsv; texts serve as ids."""
    directory, bad = directory or msmarco_dir(), BadLines(bad_lines)
    table = read_tsv(os.path.join(directory, "triples.train.small.tsv"), ("query", "positive", "negative"), bad=bad)
    bad.report("MS MARCO text triples")
    rows = np.arange(len(table))

    def column(field):
        texts = TableTexts(table, field)
        return Column(texts, texts)

    return Pairs(column("query"), column("positive"), rows, rows, column("negative"), rows[:, None])


def train_qidpidtriples(directory: str | None = None, bad_lines: str | None = None) -> Pairs:
    """(query, positive, one hard negative) of qidpidtriples.train.full.2.tsv joined with the texts."""
    directory, bad = directory or msmarco_dir(), BadLines(bad_lines)
    queries = _id_texts(os.path.join(directory, "queries.train.tsv"), "qid", "query", bad)
    collection = _id_texts(os.path.join(directory, "collection.tsv"), "pid", "passage", bad)
    fields = ("qid", "positive", "negative")
    triples = read_tsv(os.path.join(directory, "qidpidtriples.train.full.2.tsv"), fields, int_fields=fields, bad=bad)
    q, unknown_q = queries.unknown(triples.ints["qid"], "qid")
    p, unknown_p = collection.unknown(triples.ints["positive"], "pid")
    n, unknown_n = collection.unknown(triples.ints["negative"], "pid")
    _reject_lines(triples, unknown_q, unknown_p, unknown_n, bad=bad)
    keep = (q >= 0) & (p >= 0) & (n >= 0)
    bad.report("MS MARCO qidpidtriples")
    query_pos, doc_pos = _positions(queries, collection, q[keep], p[keep])
    negative_pos = np.searchsorted(collection.index.unique_rows, n[keep])
    passages = collection.column()
    return Pairs(queries.column(), passages, query_pos, doc_pos, passages, negative_pos[:, None])


def _eval_set(directory: str, split: str, bad_lines: str | None) -> EvalSet:
    """queries.<split>.tsv queries with a relevant passage, to rank over the whole collection."""
    bad = BadLines(bad_lines)
    queries, collection, qrels_table, q, p, known = _judged(directory, split, bad)
    bad.report(f"MS MARCO {split}")
    qids, pids, relevance = (qrels_table.ints[f][known] for f in ("qid", "pid", "relevance"))
    qrels: dict[str, dict[str, int]] = {}
    for qid, pid, rel in zip(qids.tolist(), pids.tolist(), relevance.tolist()):
        qrels.setdefault(str(qid), {})[str(pid)] = rel
    evaluated = np.unique(q[known][relevance > 0])
    corpus = collection.column()
    return EvalSet(
        TableTexts(queries.table, "qid", evaluated),
        TableTexts(queries.table, "query", evaluated),
        corpus.ids,
        corpus.texts,
        {qid: docs for qid, docs in qrels.items() if any(r > 0 for r in docs.values())},
    )


def dev_eval_set(directory: str | None = None, bad_lines: str | None = None) -> EvalSet:
    """queries.dev.small.tsv queries with a relevant passage, to rank over the whole collection."""
    return _eval_set(directory or msmarco_dir(), "dev.small", bad_lines)


def train_eval_set(directory: str | None = None, bad_lines: str | None = None) -> EvalSet:
    """queries.train.tsv queries with a relevant passage, over the whole collection: what `gtr-jax mine` mines."""
    return _eval_set(directory or msmarco_dir(), "train", bad_lines)
