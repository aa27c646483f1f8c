"""Read (id, text) records from JSONL or TSV files, with errors that name file and line.

JSONL (BEIR corpus/queries style): one object per line with "text", optional "_id"
and optional "title"; a non-empty title is prepended to the text with a space, as BEIR
does. TSV (MS MARCO style): `id<TAB>text` per line. The format follows the extension
(.jsonl/.json vs .tsv/.txt).
"""

import json
import os

from gtr_jax.errors import UserError, at_line

JSONL_SUFFIXES = (".jsonl", ".json")
TSV_SUFFIXES = (".tsv", ".txt")


def _lines(path: str):
    """(line number, decoded line without its newline) for each line of the file."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a file") from None
    with f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise at_line(path, number, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            yield number, line.rstrip("\r\n")


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


def read_texts(path: str) -> tuple[list[str], list[str]]:
    """(ids, texts) of every line, in file order; an empty line or empty text is an error."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in JSONL_SUFFIXES:
        parse = _jsonl_record
    elif suffix in TSV_SUFFIXES:
        parse = _tsv_record
    else:
        raise UserError(f"{path}: unknown input format; use .jsonl (BEIR style) or .tsv (id<TAB>text)")
    ids, texts = [], []
    for number, line in _lines(path):
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
