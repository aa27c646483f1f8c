"""Large TSV files (MS MARCO's collection, triples, qrels) checked and indexed with numpy.

A file is streamed in blocks of whole lines (about CHUNK_BYTES each) through
`text_files.open_bytes`; numpy finds every line's fields, checks them (field count,
empty fields, integers, UTF-8) and parses integer fields, block by block, so that
intermediate arrays stay small. A table with text fields keeps the file's bytes, and
decodes text only when a batch asks for it; a table of integers keeps only those. This
keeps the 400M-line `qidpidtriples.train.full.2.tsv` or the 8.8M-passage collection
within seconds and a few bytes per line of overhead, where a Python loop over lines
would take minutes and several times the memory.
Every problem goes to a `BadLines` with the file and 1-based line number.
"""

import dataclasses
import os

import numpy as np

from gtr_jax.errors import UserError, at_line
from gtr_jax.data.text_files import BadLines, open_bytes

CHUNK_BYTES = 1 << 26
MAX_DIGITS = 18  # int64 holds any 18-digit number


@dataclasses.dataclass
class TsvTable:
    """The kept lines of a TSV file: integer fields parsed, text fields as byte offsets."""

    path: str
    fields: tuple[str, ...]
    ints: dict[str, np.ndarray]  # field -> int64 [n]
    spans: dict[str, np.ndarray]  # field -> int64 [n, 2] (start, end) byte offsets
    data: bytearray | None  # the file, kept while text fields refer to it
    excluded_before: np.ndarray  # per excluded line (header, skipped): kept rows before it

    def __len__(self) -> int:
        return len(next(iter(self.ints.values() or self.spans.values())))

    def texts(self, field: str, rows) -> list[str]:
        """Decoded text of `field` for the given rows."""
        view, spans = memoryview(self.data), self.spans[field]
        return [str(view[start:end], "utf-8") for start, end in spans[np.asarray(rows)]]

    def line_numbers(self, rows) -> np.ndarray:
        """1-based file line of each kept row, counting the header and skipped lines."""
        rows = np.asarray(rows)
        return rows + 1 + np.searchsorted(self.excluded_before, rows, side="right")


def _int_values(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, ok) of decimal integer fields; ok is False for empty, long or non-digit fields."""
    widths = ends - starts
    ok = (widths > 0) & (widths <= MAX_DIGITS)
    values = np.zeros(len(starts), np.int64)
    for k in range(int(min(widths.max(initial=0), MAX_DIGITS))):
        inside = ok & (k < widths)
        digit = buf[np.where(inside, starts + k, 0)].astype(np.int64) - ord("0")
        ok &= ~inside | ((digit >= 0) & (digit <= 9))
        values = np.where(inside, values * 10 + digit, values)
    return values, ok


def _utf8_errors(data: bytes, begin: int, end: int, line_starts: np.ndarray) -> dict[int, str]:
    """{line index within the chunk: problem} for lines that are not valid UTF-8."""
    errors, view, position = {}, memoryview(data), begin
    while position < end:
        try:
            str(view[position:end], "utf-8")
            break
        except UnicodeDecodeError as e:
            line = int(np.searchsorted(line_starts, position + e.start, side="right")) - 1
            errors[line] = f"{e.reason} at byte {position + e.start - int(line_starts[line])}"
            position = int(line_starts[line + 1]) if line + 1 < len(line_starts) else end
    return errors


def _blocks(f):
    """The stream's bytes as blocks of whole lines, about CHUNK_BYTES each (the last may lack its newline)."""
    rest = b""
    while block := f.read(CHUNK_BYTES):
        block = rest + block
        cut = block.rfind(b"\n") + 1
        if cut:
            yield block[:cut]
        rest = block[cut:]
    if rest:
        yield rest


def _index_block(path: str, data: bytes, begin: int, fields, int_fields, lines_before: int, bad: BadLines):
    """(parsed ints, text spans, kept-line mask) of the lines of data[begin:]; problems go to `bad`.

    Spans are offsets into `data`; `lines_before` is the file's line count before `begin`.
    """
    buf = np.frombuffer(data, np.uint8)
    end = len(data)
    newlines = np.flatnonzero(buf[begin:] == ord("\n")) + begin
    starts = np.concatenate([[begin], newlines + 1])
    if starts[-1] >= end:
        starts = starts[:-1]
    ends = np.append(newlines, end)[: len(starts)]
    ends = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == ord("\r")))
    problems = {i: ("bad UTF-8", detail) for i, detail in _utf8_errors(data, begin, end, starts).items()}
    tabs = np.flatnonzero(buf[begin:] == ord("\t")) + begin
    first_tab = np.searchsorted(tabs, starts)
    num_tabs = np.searchsorted(tabs, ends) - first_tab
    for i in np.flatnonzero(ends == starts):
        problems.setdefault(int(i), ("empty line", ""))
    for i in np.flatnonzero((num_tabs != len(fields) - 1) & (ends > starts)):
        problems.setdefault(int(i), ("malformed", f"expected {len(fields)} tab-separated fields, found {num_tabs[i] + 1}"))
    rows = np.flatnonzero(num_tabs == len(fields) - 1)
    if len(rows):
        cuts = tabs[first_tab[rows, None] + np.arange(len(fields) - 1)]
    else:
        cuts = np.zeros((0, len(fields) - 1), np.int64)
    field_starts = np.concatenate([starts[rows, None], cuts + 1], axis=1)
    field_ends = np.concatenate([cuts, ends[rows, None]], axis=1)
    parsed = {}
    for j, name in enumerate(fields):
        if name in int_fields:
            parsed[name], ok = _int_values(buf, field_starts[:, j], field_ends[:, j])
            for r in np.flatnonzero(~ok):
                text = data[field_starts[r, j] : field_ends[r, j]].decode("utf-8", "replace")
                problems.setdefault(int(rows[r]), ("not an integer", f"{name} {text!r}"))
        else:
            for r in np.flatnonzero(field_ends[:, j] == field_starts[:, j]):
                problems.setdefault(int(rows[r]), ("empty text", f"the {name} field is empty"))
    for i in sorted(problems):
        reason, detail = problems[i]
        bad.reject(path, lines_before + i + 1, reason, detail)
    good_lines = np.ones(len(starts), bool)
    good_lines[list(problems)] = False
    keep = good_lines[rows]
    ints = {name: parsed[name][keep] for name in fields if name in int_fields}
    spans = {
        name: np.stack([field_starts[keep, j], field_ends[keep, j]], axis=1)
        for j, name in enumerate(fields)
        if name not in int_fields
    }
    return ints, spans, good_lines


def read_tsv(
    path: str | os.PathLike, fields: tuple[str, ...], *, int_fields=(), header: str | None = None, bad: BadLines
) -> TsvTable:
    """Check and index a TSV file (plain or .gz) whose lines have exactly the named fields.

    `int_fields` are parsed as non-negative integers; the other fields are texts that
    must not be empty. A `header` line, when given, must be the first line.
    """
    path = os.fspath(path)
    text_fields = [f for f in fields if f not in int_fields]
    ints = {f: [] for f in int_fields}
    spans = {f: [] for f in text_fields}
    kept_bytes = bytearray() if text_fields else None
    excluded, kept, lines_before, offset = [], 0, 0, 0
    with open_bytes(path) as f:
        for data in _blocks(f):
            begin = 0
            if header is not None and offset == 0:
                begin = _header_end(path, data, header)
                excluded.append(0)
                lines_before = 1
            block_ints, block_spans, good_lines = _index_block(path, data, begin, fields, int_fields, lines_before, bad)
            for name, values in block_ints.items():
                ints[name].append(values)
            for name, values in block_spans.items():
                spans[name].append(values + offset)
            bad_lines = np.flatnonzero(~good_lines)
            excluded.extend(kept + bad_lines - np.arange(len(bad_lines)))
            kept += int(good_lines.sum())
            lines_before += len(good_lines)
            if kept_bytes is not None:
                kept_bytes += data
            offset += len(data)
    if header is not None and offset == 0:
        _header_end(path, b"", header)
    if kept == 0:
        raise UserError(f"{path}: no usable lines")
    return TsvTable(
        path=path,
        fields=fields,
        ints={f: np.concatenate(v) for f, v in ints.items()},
        spans={f: np.concatenate(v) for f, v in spans.items()},
        data=kept_bytes,
        excluded_before=np.asarray(excluded, np.int64),
    )


def _header_end(path: str, data: bytes, header: str) -> int:
    """Where the first line of `data`, which must be `header`, ends (after its newline)."""
    first_end = data.find(b"\n")
    first = data[: first_end if first_end >= 0 else len(data)].rstrip(b"\r")
    if first != header.encode():
        raise at_line(path, 1, f"expected the header {header!r}, found {first.decode('utf-8', 'replace')!r}")
    return first_end + 1 if first_end >= 0 else len(data)


class IdIndex:
    """Row of each integer id of a table column; a repeated id is a bad line."""

    def __init__(self, table: TsvTable, field: str, bad: BadLines):
        ids = table.ints[field]
        order = np.argsort(ids, kind="stable")
        repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1]) + 1
        for row in np.sort(order[repeated]):
            bad.reject(table.path, int(table.line_numbers(row)), "duplicate id", f"{field} {ids[row]} appears earlier")
        keep = np.ones(len(order), bool)
        keep[repeated] = False
        self.sorted_ids, self.sorted_rows = ids[order][keep], order[keep]
        # The rows a corpus keeps: each id once, in file order.
        self.unique_rows = np.sort(self.sorted_rows)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the table has no such id."""
        at = np.minimum(np.searchsorted(self.sorted_ids, ids), len(self.sorted_ids) - 1)
        return np.where(self.sorted_ids[at] == ids, self.sorted_rows[at], -1)
