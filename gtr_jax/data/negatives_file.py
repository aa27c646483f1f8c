"""Mined hard negatives on disk: one row of ranked negative ids per (query, positive) pair.

Two formats, chosen by the file's extension when read (before any .gz):
- JSONL (.jsonl/.json): one object per row,
    {"query_id": "q1", "positive_id": "d7", "negative_ids": ["d3", "d9", ...]}
  ids are strings, or integers (stringified); "negative_ids" may be empty; other keys
  are ignored.
- qidpidtriples (.tsv/.txt): MS MARCO's `qid<TAB>positive pid<TAB>negative pid`, one
  line per negative, non-negative integer ids; consecutive lines with the same
  (qid, pid) form one row, their negatives in line order. A row without negatives has
  no line, so it is not written in this format.

A (query, positive) pair may have only one row. A malformed line raises a UserError
"path:line: why" (or is skipped and counted under the `skip` bad-lines policy,
text_files.BadLines). Writes are atomic: a temporary file in the same directory,
renamed over the target once complete (so local paths only); a path ending in .gz is
gzipped. Reads take local paths and gs:// alike.
"""

import dataclasses
import gzip
import json
import os
import re

import numpy as np

from gtr_jax.data.text_files import GZIP_SUFFIX, JSONL_SUFFIXES, TSV_SUFFIXES, BadLines, json_objects
from gtr_jax.data.tsv import MAX_DIGITS, read_tsv
from gtr_jax.errors import UserError

FORMATS = ("jsonl", "qidpidtriples")
_INTEGER_ID = re.compile(rf"0|[1-9][0-9]{{0,{MAX_DIGITS - 1}}}")


@dataclasses.dataclass
class MinedNegatives:
    """Negative ids, in rank order, for each (query id, positive id) row.

    `row_lines` and `negative_lines` are set by `read_negatives` (None otherwise): the file
    line where each row starts and, for qidpidtriples, the line of each negative.
    """

    query_ids: list[str]
    positive_ids: list[str]
    negative_ids: list[list[str]]
    row_lines: list[int] | None = None
    negative_lines: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.query_ids)

    def line_of(self, row: int, negative: int | None = None) -> int | None:
        """The file line of a row, or of one of its negatives (None when not read from a file)."""
        if negative is not None and self.negative_lines is not None:
            return self.negative_lines[row][negative]
        return None if self.row_lines is None else self.row_lines[row]


def file_format(path: str) -> str:
    """'jsonl' or 'qidpidtriples', from the extension of `path` (before any .gz)."""
    suffix = os.path.splitext(path.removesuffix(GZIP_SUFFIX))[1].lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in TSV_SUFFIXES:
        return "qidpidtriples"
    raise UserError(f"{path}: unknown negatives file format; use .jsonl (JSONL rows) or .tsv (qidpidtriples)")


def _check_rows(mined: MinedNegatives) -> None:
    if not len(mined.query_ids) == len(mined.positive_ids) == len(mined.negative_ids):
        raise ValueError(
            f"MinedNegatives has {len(mined.query_ids)} query ids, {len(mined.positive_ids)} positive ids "
            f"and {len(mined.negative_ids)} negative rows; they must be aligned"
        )


def _jsonl_lines(mined: MinedNegatives):
    for query_id, positive_id, negative_ids in zip(mined.query_ids, mined.positive_ids, mined.negative_ids):
        row = {"query_id": str(query_id), "positive_id": str(positive_id),
               "negative_ids": [str(i) for i in negative_ids]}
        yield json.dumps(row, ensure_ascii=False) + "\n"


def _integer_id(value, what: str, row: int) -> str:
    text = str(value)
    if not _INTEGER_ID.fullmatch(text):
        raise UserError(
            f"the qidpidtriples format needs non-negative integer ids of at most {MAX_DIGITS} digits "
            f"without leading zeros; row {row + 1} has {what} {text!r} (use the jsonl format)"
        )
    return text


def check_integer_ids(ids, what: str) -> None:
    """UserError unless every id can be written in the qidpidtriples format (checked before a long job)."""
    for row, value in enumerate(ids):
        _integer_id(value, what, row)


def _triples_lines(mined: MinedNegatives):
    for row, (query_id, positive_id, negative_ids) in enumerate(
        zip(mined.query_ids, mined.positive_ids, mined.negative_ids)
    ):
        qid, pid = _integer_id(query_id, "query id", row), _integer_id(positive_id, "positive id", row)
        for negative_id in negative_ids:
            yield f"{qid}\t{pid}\t{_integer_id(negative_id, 'negative id', row)}\n"


def write_negatives(path: str | os.PathLike, mined: MinedNegatives, format: str) -> None:
    """Write `mined` to `path` in `format` ('jsonl' or 'qidpidtriples'), atomically (see the module doc).

    The extension must match the format (read_negatives goes by it). Nothing is left at
    `path` or beside it when a row cannot be written (a non-integer id for qidpidtriples).
    """
    path = os.fspath(path)
    if format not in FORMATS:
        raise UserError(f"negatives file format must be one of {FORMATS}, not {format!r}")
    if file_format(path) != format:
        wanted = ".jsonl" if format == "jsonl" else ".tsv"
        raise UserError(f"{path}: a {format} negatives file must be named *{wanted} (or *{wanted}.gz)")
    _check_rows(mined)
    if "://" in path:
        raise UserError(f"{path}: negatives files are written to a local path (copy them to {path.split('://')[0]}:// "
                        "after); they are read from anywhere")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: output directory does not exist")
    lines = _jsonl_lines(mined) if format == "jsonl" else _triples_lines(mined)
    partial = os.path.join(directory, f".{os.path.basename(path)}.partial")
    try:
        with open(partial, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.endswith(GZIP_SUFFIX) else raw as f:
                for line in lines:
                    f.write(line.encode("utf-8"))
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


class _BadRow(Exception):
    """One problem of a JSONL line: (reason, detail) for BadLines.reject."""


def _row_id(record: dict, key: str) -> str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _BadRow("malformed", f'needs "{key}", a string or an integer')
    if not str(value).strip():
        raise _BadRow("malformed", f'"{key}" is blank')
    return str(value)


def _row_negatives(record: dict) -> list[str]:
    ids = record.get("negative_ids")
    if not isinstance(ids, list):
        raise _BadRow("malformed", 'needs "negative_ids", a list of ids')
    for i, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            raise _BadRow("malformed", f"negative id {i + 1} is not a non-blank string or integer")
    return [str(value) for value in ids]


def _check_unique(path: str, mined: MinedNegatives, bad: BadLines) -> MinedNegatives:
    """The rows of `mined` without repeated (query, positive) pairs, each repeat sent to `bad`."""
    first: dict[tuple[str, str], int] = {}
    keep = []
    for row, pair in enumerate(zip(mined.query_ids, mined.positive_ids)):
        line = mined.row_lines[row]
        earlier = first.setdefault(pair, line)
        if earlier != line:
            bad.reject(path, line, "duplicate row", f"query {pair[0]}, positive {pair[1]} has a row at line {earlier}")
        else:
            keep.append(row)
    if len(keep) == len(mined):
        return mined
    return MinedNegatives(
        [mined.query_ids[r] for r in keep],
        [mined.positive_ids[r] for r in keep],
        [mined.negative_ids[r] for r in keep],
        [mined.row_lines[r] for r in keep],
        None if mined.negative_lines is None else [mined.negative_lines[r] for r in keep],
    )


def _read_jsonl(path: str, bad: BadLines) -> MinedNegatives:
    mined = MinedNegatives([], [], [], row_lines=[])
    for number, record in json_objects(path, bad):
        try:
            row = _row_id(record, "query_id"), _row_id(record, "positive_id"), _row_negatives(record)
        except _BadRow as problem:
            bad.reject(path, number, *problem.args)
            continue
        mined.query_ids.append(row[0])
        mined.positive_ids.append(row[1])
        mined.negative_ids.append(row[2])
        mined.row_lines.append(number)
    if not len(mined):
        raise UserError(f"{path}: no rows")
    return mined


def _read_triples(path: str, bad: BadLines) -> MinedNegatives:
    table = read_tsv(path, ("qid", "pid", "nid"), int_fields=("qid", "pid", "nid"), bad=bad)
    qids, pids, nids = table.ints["qid"], table.ints["pid"], table.ints["nid"]
    lines = table.line_numbers(np.arange(len(qids)))
    starts = np.flatnonzero(np.concatenate([[True], (qids[1:] != qids[:-1]) | (pids[1:] != pids[:-1])]))
    ends = np.append(starts[1:], len(qids))
    negative_ids = [str(n) for n in nids.tolist()]
    negative_lines = lines.tolist()
    return MinedNegatives(
        query_ids=[str(q) for q in qids[starts].tolist()],
        positive_ids=[str(p) for p in pids[starts].tolist()],
        negative_ids=[negative_ids[s:e] for s, e in zip(starts.tolist(), ends.tolist())],
        row_lines=lines[starts].tolist(),
        negative_lines=[negative_lines[s:e] for s, e in zip(starts.tolist(), ends.tolist())],
    )


def read_negatives(path: str | os.PathLike, bad: BadLines | None = None) -> MinedNegatives:
    """The rows of a negatives file (local or gs://, .gz ok), in file order; the format follows the extension.

    `bad` decides what a malformed line does (default: the run's bad-lines policy, which
    raises "path:line: why" unless set to skip); skipped lines are reported when done.
    """
    path = os.fspath(path)
    reader = _read_jsonl if file_format(path) == "jsonl" else _read_triples
    bad = BadLines() if bad is None else bad
    mined = _check_unique(path, reader(path, bad), bad)
    bad.report(f"negatives file {path}")
    return mined

