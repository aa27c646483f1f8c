"""Read (id, text) records from JSONL or TSV files, with errors that name file and line.

JSONL (BEIR corpus/queries style): one object per line with "text", optional "_id"
and optional "title"; a non-empty title is prepended to the text with a space, as BEIR
does. TSV (MS MARCO style): `id<TAB>text` per line. The format follows the extension
(.jsonl/.json vs .tsv/.txt), before any .gz.

Every file is opened by `open_bytes`, through etils.epath (local paths and gs://
alike), which also gunzips a name ending in .gz as it streams: every reader here and
in tsv.py takes plain or gzipped files.

Dataset loaders read lines through `BadLines`, the one place that decides what a bad
line does: by default it raises a UserError naming file and line; under the `skip`
policy it counts the line by reason, and the loader reports the counts when it is done.
"""

import collections
import contextlib
import gzip
import json
import logging
import os
import zlib

import gin
from etils import epath

from gtr_jax.errors import UserError, at_line

GZIP_SUFFIX = ".gz"
JSONL_SUFFIXES = (".jsonl", ".json")
TSV_SUFFIXES = (".tsv", ".txt")
POLICIES = ("error", "skip")
# Every line skipped in this process, by (file, reason): what a command reports at its end.
SKIPPED: collections.Counter = collections.Counter()


@gin.configurable
def bad_lines_policy(bad_lines: str = "error") -> str:
    """What a malformed input line does: 'error' (one UserError naming file and line) or 'skip'."""
    if bad_lines not in POLICIES:
        raise UserError(f"bad_lines must be one of {POLICIES}, not {bad_lines!r}")
    return bad_lines


class BadLines:
    """Raises on the first bad line of a file, or counts it by reason under the skip policy."""

    def __init__(self, policy: str | None = None):
        self.policy = bad_lines_policy() if policy is None else bad_lines_policy(policy)
        self.counts: collections.Counter = collections.Counter()

    def reject(self, path: str, line_number: int, reason: str, detail: str = "") -> None:
        """Raise for this line, or count it under `reason` when skipping."""
        if self.policy == "error":
            raise at_line(path, line_number, f"{reason}: {detail}" if detail else reason)
        self.counts[(path, reason)] += 1
        SKIPPED[(path, reason)] += 1

    def report(self, what: str) -> None:
        """Log the skipped-line counts (if any) once a dataset is loaded."""
        if self.counts:
            logging.warning("%s: %s", what, describe_skipped(self.counts))


def describe_skipped(counts) -> str:
    """One line per file: 'skipped 3 lines of a.tsv (2 malformed, 1 bad UTF-8)'."""
    by_file: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for (path, reason), count in sorted(counts.items()):
        by_file[path][reason] = count
    return "; ".join(
        f"skipped {sum(reasons.values())} lines of {path} ("
        + ", ".join(f"{count} {reason}" for reason, count in reasons.items())
        + ")"
        for path, reasons in by_file.items()
    )


@contextlib.contextmanager
def open_bytes(path: str | os.PathLike):
    """A binary stream of the file (local or gs://), gunzipped as it is read when the name ends in .gz.

    A missing file, a directory, or a read that fails inside the `with` (a truncated or
    corrupt gzip stream, say) is a one-line UserError naming the file.
    """
    name = os.fspath(path)
    try:
        with epath.Path(name).open("rb") as f:
            yield gzip.GzipFile(fileobj=f, mode="rb") if name.endswith(GZIP_SUFFIX) else f
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a directory, not a file") from None
    except (EOFError, zlib.error, OSError) as e:
        raise UserError(f"{name}: cannot read ({e})") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file (local or gs://), gunzipped when the name ends in .gz."""
    with open_bytes(path) as f:
        return f.read()


def numbered_lines(path: str | os.PathLike):
    """(1-based line number, raw bytes with their newline) of each line, streamed."""
    with open_bytes(path) as f:
        yield from enumerate(f, start=1)


def decoded_lines(path: str | os.PathLike, bad: BadLines):
    """(line number, text without newline) of each valid UTF-8 line; bad ones go to `bad`."""
    path = os.fspath(path)
    for number, raw in numbered_lines(path):
        try:
            yield number, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            bad.reject(path, number, "bad UTF-8", f"{e.reason} at byte {e.start}")


def json_objects(path: str | os.PathLike, bad: BadLines, skip_first: bool = False):
    """(line number, dict) of each line that is a JSON object; the rest go to `bad`."""
    path = os.fspath(path)
    for number, line in decoded_lines(path, bad):
        if skip_first and number == 1:
            continue
        if not line.strip():
            bad.reject(path, number, "empty line")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            bad.reject(path, number, "malformed", f"not valid JSON ({e.msg})")
            continue
        if not isinstance(record, dict):
            bad.reject(path, number, "malformed", "expected a JSON object")
            continue
        yield number, record


def _jsonl_record(path: str, number: int, line: str) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise at_line(path, number, f"not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise at_line(path, number, "expected a JSON object")
    text, title = record.get("text"), record.get("title") or ""
    if not isinstance(text, str) or not isinstance(title, str):
        raise at_line(path, number, 'needs a string field "text" (and "title", if present, a string)')
    record_id = record.get("_id", str(number))
    return str(record_id), f"{title} {text}".strip() if title else text


def _tsv_record(path: str, number: int, line: str) -> tuple[str, str]:
    fields = line.split("\t")
    if len(fields) != 2:
        raise at_line(path, number, f"expected 2 tab-separated fields (id, text), found {len(fields)}")
    return fields[0], fields[1]


def read_texts(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(ids, texts) of every line, in file order; an empty line or empty text is an error."""
    path = os.fspath(path)
    suffix = os.path.splitext(path.removesuffix(GZIP_SUFFIX))[1].lower()
    if suffix in JSONL_SUFFIXES:
        parse = _jsonl_record
    elif suffix in TSV_SUFFIXES:
        parse = _tsv_record
    else:
        raise UserError(f"{path}: unknown input format; use .jsonl (BEIR style) or .tsv (id<TAB>text)")
    ids, texts = [], []
    for number, raw in numbered_lines(path):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise at_line(path, number, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if not line.strip():
            raise at_line(path, number, "empty line")
        record_id, text = parse(path, number, line)
        if not text.strip():
            raise at_line(path, number, "empty text")
        ids.append(record_id)
        texts.append(text)
    if not texts:
        raise UserError(f"{path}: no records")
    return ids, texts
