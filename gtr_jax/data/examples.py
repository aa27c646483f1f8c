"""Training pairs and evaluation sets as plain in-memory structures, and their id hashes.

Every source (MS MARCO, MultiReQA, BEIR, the demo) loads into the same two shapes:
`Pairs` (query, positive passage, optional hard negatives, by row into text columns)
for training, and `EvalSet` (queries, corpus, qrels) for corpus-level retrieval.
Columns hold texts either as Python lists or as rows of a `TsvTable`, so MS MARCO's
8.8M passages stay one bytes buffer and are decoded only when a batch needs them.
"""

import collections.abc
import dataclasses
import hashlib
import os
from typing import Callable, Sequence

import numpy as np

from gtr_jax.data.tsv import TsvTable

ID_MASK = 0x7FFFFFFF


def stable_ids(ids: Sequence[str]) -> np.ndarray:
    """int32 [n] 31-bit hashes of string ids, equal in every process and run (unlike hash())."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") & ID_MASK for i in ids),
        np.int32,
        count=len(ids),
    )


class TableTexts(collections.abc.Sequence):
    """A read-only sequence of one text (or integer id) field of chosen TsvTable rows."""

    def __init__(self, table: TsvTable, field: str, rows: np.ndarray | None = None):
        self.table, self.field = table, field
        self.rows = np.arange(len(table)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        return self.take([index])[0]

    def take(self, positions) -> list[str]:
        """The strings at the given positions."""
        rows = self.rows[np.asarray(positions, np.int64)]
        if self.field in self.table.ints:
            return [str(v) for v in self.table.ints[self.field][rows]]
        return self.table.texts(self.field, rows)


def take(sequence: Sequence[str], positions) -> list[str]:
    """sequence[p] for each position, without decoding a whole TableTexts."""
    if isinstance(sequence, TableTexts):
        return sequence.take(positions)
    return [sequence[int(p)] for p in positions]


@dataclasses.dataclass
class Column:
    """Aligned ids and texts; a source without ids (text triples) uses the texts as ids."""

    ids: Sequence[str]
    texts: Sequence[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclasses.dataclass
class Pairs:
    """Example i is (queries[query_rows[i]], docs[doc_rows[i]], negatives[negative_rows[i, :]])."""

    queries: Column
    docs: Column
    query_rows: np.ndarray
    doc_rows: np.ndarray
    negatives: Column | None = None
    negative_rows: np.ndarray | None = None  # [n, num_negatives]

    def __len__(self) -> int:
        return len(self.query_rows)

    @property
    def num_negatives(self) -> int:
        """Hard negatives per example (0 without negatives)."""
        return 0 if self.negative_rows is None else self.negative_rows.shape[1]

    def examples(self, indices) -> dict[str, list]:
        """Texts and string ids of the given examples: query, doc, and negatives if any."""
        indices = np.asarray(indices, np.int64)
        q, d = self.query_rows[indices], self.doc_rows[indices]
        out = {
            "query": take(self.queries.texts, q),
            "query_id": take(self.queries.ids, q),
            "doc": take(self.docs.texts, d),
            "doc_id": take(self.docs.ids, d),
        }
        if self.negative_rows is not None:
            n = self.negative_rows[indices].reshape(-1)
            k = self.num_negatives
            texts, ids = take(self.negatives.texts, n), take(self.negatives.ids, n)
            out["negatives"] = [texts[i : i + k] for i in range(0, len(texts), k)]
            out["negative_ids"] = [ids[i : i + k] for i in range(0, len(ids), k)]
        return out


@dataclasses.dataclass
class EvalSet:
    """A retrieval evaluation: rank the corpus for each query; qrels[qid][docid] = relevance."""

    query_ids: Sequence[str]
    query_texts: Sequence[str]
    doc_ids: Sequence[str]
    doc_texts: Sequence[str]
    qrels: dict[str, dict[str, int]]


def positive_pairs(eval_set: EvalSet) -> Pairs:
    """One pair per (query, document with relevance > 0), in query then qrels order."""
    doc_row = {doc_id: row for row, doc_id in enumerate(eval_set.doc_ids)}
    query_rows, doc_rows = [], []
    for row, qid in enumerate(eval_set.query_ids):
        for doc_id, relevance in eval_set.qrels.get(qid, {}).items():
            if relevance > 0:
                query_rows.append(row)
                doc_rows.append(doc_row[doc_id])
    return Pairs(
        Column(eval_set.query_ids, eval_set.query_texts),
        Column(eval_set.doc_ids, eval_set.doc_texts),
        np.asarray(query_rows, np.int64),
        np.asarray(doc_rows, np.int64),
    )


_CACHE: dict = {}
_CACHE_SIZE = 16


def file_stamp(*paths: str) -> tuple:
    """What identifies the current contents of files cheaply: path, size and mtime."""
    stamp = []
    for path in paths:
        try:
            st = os.stat(path)
            stamp.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((path,))  # missing (the loader reports it) or gs://
    return tuple(stamp)


def cached(key: tuple, build: Callable):
    """build(), remembered under key: tasks, the iterator and eval share one load per process."""
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = build()
    return _CACHE[key]
