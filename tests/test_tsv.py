"""Checking and indexing TSV files with numpy."""

import contextlib
import gzip

import numpy as np
import pytest
from etils import epath

from data_files import write
from gtr_jax.data import text_files, tsv
from gtr_jax.errors import UserError
from gtr_jax.data.text_files import BadLines


def read(tmp_path, content, fields=("pid", "passage"), int_fields=("pid",), policy="error", **kwargs):
    bad = BadLines(policy)
    table = tsv.read_tsv(write(str(tmp_path / "f.tsv"), content), fields, int_fields=int_fields, bad=bad, **kwargs)
    return table, bad


def test_fields_ints_and_crlf(tmp_path):
    table, _ = read(tmp_path, "7\tcafé au lait\r\n123456789012\tx y\n")
    assert list(table.ints["pid"]) == [7, 123456789012]
    assert table.texts("passage", [1, 0]) == ["x y", "café au lait"]
    assert list(table.line_numbers([0, 1])) == [1, 2]


def test_last_line_without_newline_and_header(tmp_path):
    table, _ = read(tmp_path, "id\ttext\n1\ta\n2\tb", header="id\ttext")
    assert list(table.ints["pid"]) == [1, 2] and list(table.line_numbers([0, 1])) == [2, 3]


def test_chunks_join_up(tmp_path, monkeypatch):
    monkeypatch.setattr(tsv, "CHUNK_BYTES", 16)
    lines = [f"{i}\tpassage number {i}\n" for i in range(50)]
    table, _ = read(tmp_path, "".join(lines[:20]) + "x\ty\n" + "".join(lines[20:]), policy="skip")
    assert list(table.ints["pid"]) == list(range(50))
    assert table.texts("passage", [49]) == ["passage number 49"]
    assert list(table.line_numbers([19, 20])) == [20, 22]


@pytest.mark.parametrize(
    "content, message",
    [
        ("1\ta\n2\tb\tc\n", "f.tsv:2: malformed: expected 2 tab-separated fields, found 3"),
        ("1\ta\n\n", "f.tsv:2: empty line"),
        ("1\ta\n2\t\n", "f.tsv:2: empty text: the passage field is empty"),
        ("1\ta\nx2\tb\n", "f.tsv:2: not an integer: pid 'x2'"),
        ("1\ta\n1234567890123456789\tb\n", "f.tsv:2: not an integer"),
        (b"1\ta\n2\t\xc3\n", "f.tsv:2: bad UTF-8"),
    ],
)
def test_errors_name_file_and_line(tmp_path, content, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        read(tmp_path, content)


def test_skip_keeps_good_lines_and_their_line_numbers(tmp_path):
    table, bad = read(tmp_path, b"1\ta\n2\n\n3\t\xff\n4\t\n5\te\n", policy="skip")
    assert list(table.ints["pid"]) == [1, 5] and list(table.line_numbers([1])) == [6]
    assert {reason: n for (_, reason), n in bad.counts.items()} == {"malformed": 1, "empty line": 1, "bad UTF-8": 1, "empty text": 1}


def test_no_usable_line_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no usable lines"):
        read(tmp_path, "x\n", policy="skip")


def test_id_index(tmp_path):
    table, bad = read(tmp_path, "5\ta\n3\tb\n5\tc\n", policy="skip")
    index = tsv.IdIndex(table, "pid", bad)
    assert list(index.rows(np.array([3, 5, 4]))) == [1, 0, -1]
    assert list(index.unique_rows) == [0, 1]
    assert sum(n for (_, r), n in bad.counts.items() if r == "duplicate id") == 1


def test_unknown_policy_is_a_user_error():
    with pytest.raises(UserError, match="bad_lines must be one of"):
        BadLines("maybe")


def table_contents(table):
    """Everything a reader of the table can see, as plain Python values."""
    rows = range(len(table))
    return ({f: v.tolist() for f, v in table.ints.items()},
            {f: table.texts(f, rows) for f in table.spans}, table.line_numbers(rows).tolist())


@pytest.mark.parametrize("chunk_bytes", [16, tsv.CHUNK_BYTES])
@pytest.mark.parametrize("as_path", [str, epath.Path], ids=["str", "epath"])
def test_gzipped_tables_read_like_plain_ones(tmp_path, monkeypatch, chunk_bytes, as_path):
    monkeypatch.setattr(tsv, "CHUNK_BYTES", chunk_bytes)
    content = "id\ttext\n" + "".join(f"{i}\tpassage número {i}\r\n" for i in range(30)) + "x\ty\n30\tlast"
    (tmp_path / "f.tsv").write_text(content, encoding="utf-8", newline="")
    (tmp_path / "f.tsv.gz").write_bytes(gzip.compress(content.encode()))
    tables = [tsv.read_tsv(as_path(tmp_path / name), ("pid", "passage"), int_fields=("pid",), header="id\ttext",
                           bad=BadLines("skip")) for name in ("f.tsv", "f.tsv.gz")]
    assert tables[1].path == str(tmp_path / "f.tsv.gz")
    assert table_contents(tables[0]) == table_contents(tables[1]) == (
        {"pid": list(range(31))},
        {"passage": [f"passage número {i}" for i in range(30)] + ["last"]},
        list(range(2, 32)) + [33],
    )


def test_integer_tables_of_gzipped_files(tmp_path):
    rows = [(q, p, n) for q, p, n in zip(range(100), range(100, 200), range(200, 300))]
    write(str(tmp_path / "t.tsv.gz"), "".join(f"{q}\t{p}\t{n}\n" for q, p, n in rows))
    table = tsv.read_tsv(str(tmp_path / "t.tsv.gz"), ("q", "p", "n"), int_fields=("q", "p", "n"), bad=BadLines())
    assert table.data is None
    assert list(zip(*(table.ints[f].tolist() for f in ("q", "p", "n")))) == rows


def test_files_are_streamed_in_chunks_not_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(tsv, "CHUNK_BYTES", 64)
    requested = []

    @contextlib.contextmanager
    def recording_open(path):
        with text_files.open_bytes(path) as f:
            read = f.read
            f.read = lambda size=-1: requested.append(size) or read(size)
            yield f

    monkeypatch.setattr(tsv, "open_bytes", recording_open)
    lines = "".join(f"{i}\tpassage {i}\n" for i in range(200))
    for name in ("c.tsv", "c.tsv.gz"):
        requested.clear()
        path = write(str(tmp_path / name), lines)
        table = tsv.read_tsv(path, ("pid", "passage"), int_fields=("pid",), bad=BadLines())
        assert table.texts("passage", [199]) == ["passage 199"]
        assert len(requested) > len(lines) // 64 and all(0 < size <= 64 for size in requested)
