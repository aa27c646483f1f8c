"""Training pairs from a user's JSONL file: sentence-transformers' (anchor, positive, negatives).

Format: one JSON object per line,
  {"query": str, "positive": str, "negatives": [str, ...],
   "query_id": id, "positive_id": id, "negative_ids": [id, ...]}
"query" and "positive" are required non-blank strings; everything else is optional, and
other keys are ignored. An id is a string or an integer (5 and "5" are the same id).
Queries and passages (positives and negatives together, as the loss compares them) are
two id spaces; an item without an id is identified by its text, so identical texts are
the same item, which the loss's duplicate masking relies on. An id seen again with a
different text is a bad line. "negative_ids", when given, has one id per negative.

Hard negatives: every line has the same number k of "negatives" (a line without the key
has 0). With `num_negatives=None`, k is the count of the first accepted line and a line
with another count is a bad line; with `num_negatives=k`, a line with more is cut to
its first k (and their ids) and a line with fewer is a bad line. k = 0 gives plain pairs.

Files may be gzipped (.jsonl.gz) and local or gs://. A bad line raises a UserError naming
file:line, or is skipped and counted under the `skip` bad-lines policy (text_files).
"""

import dataclasses
import os

import numpy as np

from gtr_jax.data.examples import Column, Pairs, cached, file_stamp
from gtr_jax.data.text_files import BadLines, json_objects
from gtr_jax.errors import UserError


@dataclasses.dataclass
class _Items:
    """Distinct (id, text) items in first-seen order, and the line each id was first seen on."""

    rows: dict = dataclasses.field(default_factory=dict)
    ids: list = dataclasses.field(default_factory=list)
    texts: list = dataclasses.field(default_factory=list)
    lines: list = dataclasses.field(default_factory=list)

    def clash(self, item_id: str, text: str) -> int | None:
        """The line where `item_id` was first seen with another text, or None."""
        row = self.rows.get(item_id)
        return None if row is None or self.texts[row] == text else self.lines[row]

    def add(self, item_id: str, text: str, line: int) -> int:
        """The row of the item, appended if its id is new."""
        row = self.rows.get(item_id)
        if row is None:
            row = self.rows[item_id] = len(self.ids)
            self.ids.append(item_id)
            self.texts.append(text)
            self.lines.append(line)
        return row

    def column(self) -> Column:
        """The items as aligned ids and texts."""
        return Column(self.ids, self.texts)


class _BadLine(Exception):
    """One problem of a line: (reason, detail) for BadLines.reject."""


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise _BadLine("malformed", f'needs a string "{key}"')
    if not value.strip():
        raise _BadLine("empty text", f'"{key}" is blank')
    return value


def _id(record: dict, key: str, text: str) -> str:
    """The record's id under `key` as a string, or the text when the key is absent."""
    if key not in record:
        return text
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _BadLine("malformed", f'"{key}" must be a string or an integer')
    return str(value)


def _negatives(record: dict) -> list[tuple[str, str]]:
    """(id, text) of each of the record's negatives, in order."""
    texts = record.get("negatives", [])
    if not isinstance(texts, list):
        raise _BadLine("malformed", '"negatives" must be a list of strings')
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise _BadLine("malformed", f"negative {i + 1} is not a string")
        if not text.strip():
            raise _BadLine("empty text", f"negative {i + 1} is blank")
    if "negative_ids" not in record:
        return [(text, text) for text in texts]
    ids = record["negative_ids"]
    if not isinstance(ids, list) or len(ids) != len(texts):
        raise _BadLine("malformed", f'"negative_ids" must be a list of {len(texts)} ids, one per negative')
    if any(isinstance(i, bool) or not isinstance(i, (str, int)) for i in ids):
        raise _BadLine("malformed", '"negative_ids" must hold strings or integers')
    return [(str(i), text) for i, text in zip(ids, texts)]


def _check_ids(queries: _Items, passages: _Items, query: tuple, line_passages: list, number: int) -> None:
    """Raise when an id of the line was seen (earlier, or on this line) with another text."""
    clash = queries.clash(*query)
    if clash is not None:
        raise _BadLine("conflicting id", f"query id {query[0]} has another text on line {clash}")
    seen: dict[str, str] = {}
    for item_id, text in line_passages:
        clash = passages.clash(item_id, text)
        if clash is None and seen.setdefault(item_id, text) != text:
            clash = number
        if clash is not None:
            raise _BadLine("conflicting id", f"passage id {item_id} has another text on line {clash}")


def _load(path: str, num_negatives: int | None, policy: str) -> Pairs:
    bad = BadLines(policy)
    queries, passages = _Items(), _Items()
    query_rows, doc_rows, negative_rows = [], [], []
    k, k_line = num_negatives, None  # the negative count; without num_negatives, the first accepted line's
    for number, record in json_objects(path, bad):
        try:
            query, positive = _text(record, "query"), _text(record, "positive")
            query_id, positive_id = _id(record, "query_id", query), _id(record, "positive_id", positive)
            negatives = _negatives(record)
            if k is not None and (len(negatives) < k or (len(negatives) > k and num_negatives is None)):
                expected = f"line {k_line} has {k}" if num_negatives is None else f"num_negatives is {k}"
                raise _BadLine("wrong number of negatives", f"{len(negatives)}, but {expected}")
            negatives = negatives[:k]
            _check_ids(queries, passages, (query_id, query), [(positive_id, positive), *negatives], number)
        except _BadLine as problem:
            bad.reject(path, number, *problem.args)
            continue
        if k is None:
            k, k_line = len(negatives), number
        query_rows.append(queries.add(query_id, query, number))
        doc_rows.append(passages.add(positive_id, positive, number))
        negative_rows.append([passages.add(item_id, text, number) for item_id, text in negatives])
    if not query_rows:
        raise UserError(f"{path}: no usable pairs")
    bad.report(f"JSONL pairs {path}")
    column = passages.column()
    pairs = Pairs(queries.column(), column, np.asarray(query_rows, np.int64), np.asarray(doc_rows, np.int64))
    if k:
        pairs.negatives, pairs.negative_rows = column, np.asarray(negative_rows, np.int64).reshape(-1, k)
    return pairs


def read_pairs(path: str | os.PathLike, num_negatives: int | None = None, bad_lines: str | None = None) -> Pairs:
    """The (query, positive, hard negatives) examples of a JSONL pairs file, in file order (see the module doc).

    num_negatives: None to take every line's count from the file (all lines must agree),
    or k to keep the first k negatives of each line (a line with fewer is a bad line).
    """
    if num_negatives is not None and (isinstance(num_negatives, bool) or not isinstance(num_negatives, int)
                                      or num_negatives < 0):
        raise UserError(f"num_negatives must be None or an integer >= 0, not {num_negatives!r}")
    path, policy = os.fspath(path), BadLines(bad_lines).policy
    key = ("jsonl pairs", file_stamp(path), num_negatives, policy)
    return cached(key, lambda: _load(path, num_negatives, policy))
