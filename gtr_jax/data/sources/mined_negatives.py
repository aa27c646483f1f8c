"""A pairs task joined with a file of mined hard negatives (gtr_jax/data/negatives_file.py).

Each example (query, positive) of the pairs task looks up the file's row for its
(query id, positive id) and takes that row's first k negatives (the file ranks them),
as the batch's negative_tokens / negative_ids. Negative ids name passages of the pairs
task's document column (its corpus: the demo's passages, MS MARCO's collection, a BEIR
corpus). Checks, each a bad line of the negatives file (a UserError "path:line: why",
or skipped and counted under the `skip` bad-lines policy):
  * unknown id: the query, the positive or a negative is not in the pairs task;
  * unknown pair: the positive is not a positive of that query in the task;
  * positive as negative: a negative is a positive of the row's query in the task.

A pair whose row has fewer than k negatives (a pair without a row has 0) follows
`short_rows`:
  * "error" (the default): a UserError naming the first such row (file:line) or pair,
    with how many there are;
  * "skip": the pair is left out of training;
  * "repeat": the row's negatives are cycled to k (a negative may then appear twice in
    the loss's pool); a pair with no negatives at all is left out.
Every skipped or repeated pair is counted and logged when the task is loaded.
"""

import collections
import dataclasses
import logging
import os
from typing import Callable, Sequence

import numpy as np

from gtr_jax.data.examples import Pairs, cached, file_stamp, take
from gtr_jax.data.negatives_file import MinedNegatives, read_negatives
from gtr_jax.data.text_files import BadLines
from gtr_jax.errors import UserError, at_line

SHORT_ROWS = ("error", "skip", "repeat")
_SCAN_CHUNK = 1 << 20  # ids taken from a column at a time while looking for the file's ids


def check_options(num_negatives: int, short_rows: str) -> None:
    """Raise a UserError unless num_negatives is an integer >= 1 and short_rows one of SHORT_ROWS."""
    if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
        raise UserError(f"num_negatives must be an integer >= 1, not {num_negatives!r}")
    if short_rows not in SHORT_ROWS:
        raise UserError(f"short_rows must be one of {SHORT_ROWS}, not {short_rows!r}")


def _rows_of(ids: Sequence[str], wanted: set) -> dict[str, int]:
    """{id: its first position in `ids`} for the wanted ids that are there."""
    found: dict[str, int] = {}
    for start in range(0, len(ids), _SCAN_CHUNK):
        for offset, item in enumerate(take(ids, range(start, min(start + _SCAN_CHUNK, len(ids))))):
            if item in wanted and item not in found:
                found[item] = start + offset
    return found


@dataclasses.dataclass
class _Rows:
    """The file's valid rows as doc-column rows of their negatives, by (query id, positive id)."""

    negatives: dict[tuple[str, str], list[int]]
    lines: dict[tuple[str, str], int]


def _check_rows(path: str, mined: MinedNegatives, pairs: Pairs, query_ids, doc_ids, task: str,
                bad: BadLines) -> _Rows:
    """Each row's negatives as doc rows; rows naming what the task lacks go to `bad`."""
    positives_of: dict[str, set] = collections.defaultdict(set)
    for query_id, doc_id in zip(query_ids, doc_ids):
        positives_of[query_id].add(doc_id)
    wanted = set(mined.positive_ids)
    for negative_ids in mined.negative_ids:
        wanted.update(negative_ids)
    doc_row = _rows_of(pairs.docs.ids, wanted)
    rows = _Rows({}, {})
    for r, (query_id, positive_id, negative_ids) in enumerate(
        zip(mined.query_ids, mined.positive_ids, mined.negative_ids)
    ):
        line = mined.line_of(r)
        if query_id not in positives_of:
            bad.reject(path, line, "unknown id", f"query {query_id} has no pair in task {task}")
        elif positive_id not in doc_row:
            bad.reject(path, line, "unknown id", f"positive {positive_id} is not a passage of task {task}")
        elif positive_id not in positives_of[query_id]:
            bad.reject(path, line, "unknown pair",
                       f"{positive_id} is not a positive of query {query_id} in task {task}")
        else:
            problem = _negative_problem(negative_ids, doc_row, positives_of[query_id], query_id, task)
            if problem is None:
                rows.negatives[query_id, positive_id] = [doc_row[n] for n in negative_ids]
                rows.lines[query_id, positive_id] = line
            else:
                j, reason, detail = problem
                bad.reject(path, mined.line_of(r, j), reason, detail)
    return rows


def _negative_problem(negative_ids, doc_row, positives, query_id, task):
    """(index, reason, detail) of a row's first bad negative, or None."""
    for j, negative_id in enumerate(negative_ids):
        if negative_id not in doc_row:
            return j, "unknown id", f"negative {negative_id} is not a passage of task {task}"
        if negative_id in positives:
            return j, "positive as negative", f"negative {negative_id} is a positive of query {query_id} in task {task}"
    return None


def join(pairs: Pairs, mined: MinedNegatives, path: str, num_negatives: int, short_rows: str, task: str,
         bad: BadLines | None = None) -> tuple[Pairs, collections.Counter]:
    """`pairs` with `num_negatives` negatives per example from `mined`, and counts of what happened.

    The counts: "joined" (examples with a full row), "repeated" (short rows cycled),
    "short" and "missing" (examples left out: a row too short, no row).
    """
    check_options(num_negatives, short_rows)
    bad = BadLines() if bad is None else bad
    query_ids, doc_ids = take(pairs.queries.ids, pairs.query_rows), take(pairs.docs.ids, pairs.doc_rows)
    rows = _check_rows(path, mined, pairs, query_ids, doc_ids, task, bad)
    bad.report(f"negatives file {path}")
    counts: collections.Counter = collections.Counter()
    keep, negative_rows, first_short = [], [], None
    for i, key in enumerate(zip(query_ids, doc_ids)):
        found = rows.negatives.get(key, [])
        if len(found) >= num_negatives:
            outcome = "joined"
        elif short_rows == "repeat" and found:
            outcome = "repeated"
        else:
            outcome = "missing" if key not in rows.negatives else "short"
            first_short = first_short or (key, len(found))
        counts[outcome] += 1
        if outcome in ("joined", "repeated"):
            keep.append(i)
            negative_rows.append([found[j % len(found)] for j in range(num_negatives)])
    if short_rows == "error" and first_short is not None:
        raise _short_error(path, rows, first_short, counts, num_negatives, task)
    if not keep:
        raise UserError(f"{path}: no example of task {task} has a row with negatives")
    keep = np.asarray(keep, np.int64)
    joined = Pairs(pairs.queries, pairs.docs, pairs.query_rows[keep], pairs.doc_rows[keep],
                   pairs.docs, np.asarray(negative_rows, np.int64).reshape(-1, num_negatives))
    return joined, counts


def _short_error(path, rows: _Rows, first, counts, k: int, task: str) -> UserError:
    (query_id, positive_id), found = first
    more = counts["short"] + counts["missing"] - 1
    tail = f" ({more} more examples of task {task} have fewer than {k}; short_rows='skip' or 'repeat' accepts them)"
    if (query_id, positive_id) in rows.lines:
        line = rows.lines[query_id, positive_id]
        return at_line(path, line, f"query {query_id}, positive {positive_id} has {found} negatives, "
                                   f"fewer than num_negatives {k}{tail}")
    return UserError(f"{path}: no row for query {query_id}, positive {positive_id} of task {task}{tail}")


def describe(counts: collections.Counter, num_negatives: int) -> str:
    """One line: how many examples were joined, repeated and left out."""
    parts = [f"{counts['joined']} examples with {num_negatives} negatives"]
    if counts["repeated"]:
        parts.append(f"{counts['repeated']} with fewer, repeated to {num_negatives}")
    if counts["short"]:
        parts.append(f"{counts['short']} left out with fewer than {num_negatives}")
    if counts["missing"]:
        parts.append(f"{counts['missing']} left out without a row")
    return ", ".join(parts)


def load(base: Callable[[], Pairs], path: str, num_negatives: int, short_rows: str, task: str) -> Pairs:
    """The pairs of `base()` joined with the negatives file at `path` (see the module doc); logs the counts."""
    path = os.fspath(path)
    bad = BadLines()
    mined = cached(("negatives file", file_stamp(path), bad.policy), lambda: read_negatives(path, bad))
    pairs = base()
    if pairs.negative_rows is not None:
        raise UserError(f"task {task}: its pairs task already has hard negatives; join a task of plain pairs "
                        "(e.g. msmarco_train_pairs, not the triples)")
    joined, counts = join(pairs, mined, path, num_negatives, short_rows, task, bad)
    message = f"task {task}: {describe(counts, num_negatives)} from {path}"
    if counts["repeated"] or counts["short"] or counts["missing"]:
        logging.warning(message)
    else:
        logging.info(message)
    return joined
