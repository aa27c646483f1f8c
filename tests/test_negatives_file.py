"""The mined-negatives file formats: round trips, atomic writes, and bad lines named by file:line."""

import json
import os

import gin
import pytest

from data_files import tsv, write
from gtr_jax.data.negatives_file import MinedNegatives, file_format, read_negatives, write_negatives
from gtr_jax.data.text_files import SKIPPED
from gtr_jax.errors import UserError

MINED = MinedNegatives(
    query_ids=["10", "11", "12", "10"],
    positive_ids=["0", "1", "2", "5"],
    negative_ids=[["7", "3", "9"], ["4"], ["0", "8"], ["6", "2"]],
)


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def rows(mined: MinedNegatives):
    return list(zip(mined.query_ids, mined.positive_ids, mined.negative_ids))


@pytest.mark.parametrize("name, format", [("neg.jsonl", "jsonl"), ("neg.jsonl.gz", "jsonl"),
                                          ("neg.tsv", "qidpidtriples"), ("neg.tsv.gz", "qidpidtriples")])
def test_round_trip(tmp_path, name, format):
    path = str(tmp_path / name)
    write_negatives(path, MINED, format)
    assert os.listdir(tmp_path) == [name]  # no temporary file left beside it
    with open(path, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == name.endswith(".gz")
    got = read_negatives(path)
    assert rows(got) == rows(MINED)
    assert file_format(path) == format


def test_files_are_as_documented(tmp_path):
    jsonl_path, triples_path = str(tmp_path / "n.jsonl"), str(tmp_path / "n.tsv")
    write_negatives(jsonl_path, MINED, "jsonl")
    write_negatives(triples_path, MINED, "qidpidtriples")
    with open(jsonl_path) as f:
        assert [json.loads(line) for line in f] == [
            {"query_id": q, "positive_id": p, "negative_ids": n} for q, p, n in rows(MINED)]
    with open(triples_path) as f:
        assert f.read() == tsv((q, p, n) for q, p, negatives in rows(MINED) for n in negatives)
    got = read_negatives(triples_path)
    assert got.row_lines == [1, 4, 5, 7]
    assert got.negative_lines == [[1, 2, 3], [4], [5, 6], [7, 8]]
    assert got.line_of(2, 1) == 6 and got.line_of(3) == 7
    assert read_negatives(jsonl_path).row_lines == [1, 2, 3, 4]


def test_jsonl_keeps_any_ids_and_empty_rows(tmp_path):
    path = str(tmp_path / "n.jsonl")
    mined = MinedNegatives(["q a", "q/b"], ["doc-1", "dé"], [["x", "y z"], []])
    write_negatives(path, mined, "jsonl")
    assert rows(read_negatives(path)) == rows(mined)
    # Integer ids are read as strings; other keys are ignored.
    write(path, '{"query_id": 3, "positive_id": 4, "negative_ids": [5, "6"], "scores": [0.5, 0.4]}\n')
    assert rows(read_negatives(path)) == [("3", "4", ["5", "6"])]


@pytest.mark.parametrize("mined, detail", [
    (MinedNegatives(["q1"], ["1"], [["2"]]), "row 1 has query id 'q1'"),
    (MinedNegatives(["1", "2"], ["1", "01"], [["2"], ["3"]]), "row 2 has positive id '01'"),
    (MinedNegatives(["1"], ["1"], [["2", "-3"]]), "row 1 has negative id '-3'"),
])
def test_qidpidtriples_needs_integer_ids_and_leaves_nothing(tmp_path, mined, detail):
    path = tmp_path / "n.tsv"
    with pytest.raises(UserError, match=rf"^the qidpidtriples format needs non-negative integer ids .* {detail}"):
        write_negatives(str(path), mined, "qidpidtriples")
    assert os.listdir(tmp_path) == []


def test_write_refuses_a_name_unlike_its_format_and_a_missing_directory(tmp_path):
    with pytest.raises(UserError, match=r"n\.tsv: a jsonl negatives file must be named \*\.jsonl"):
        write_negatives(str(tmp_path / "n.tsv"), MINED, "jsonl")
    with pytest.raises(UserError, match=r"must be one of \('jsonl', 'qidpidtriples'\), not 'csv'"):
        write_negatives(str(tmp_path / "n.tsv"), MINED, "csv")
    with pytest.raises(UserError, match=r"^gs://bucket/n\.jsonl: negatives files are written to a local path"):
        write_negatives("gs://bucket/n.jsonl", MINED, "jsonl")
    with pytest.raises(UserError, match=r"output directory does not exist"):
        write_negatives(str(tmp_path / "nowhere" / "n.jsonl"), MINED, "jsonl")
    with pytest.raises(UserError, match=r"n\.csv: unknown negatives file format"):
        read_negatives(str(tmp_path / "n.csv"))
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "n.tsv")
    write_negatives(path, MINED, "qidpidtriples")
    with open(path) as f:
        before = f.read()
    with pytest.raises(UserError):
        write_negatives(path, MinedNegatives(["1", "x"], ["1", "2"], [["3"], ["4"]]), "qidpidtriples")
    with open(path) as f:
        assert f.read() == before
    assert os.listdir(tmp_path) == ["n.tsv"]


GOOD = '{"query_id": "q", "positive_id": "p", "negative_ids": ["a"]}'


@pytest.mark.parametrize("line, message", [
    ('{"query_id": "q"', "malformed: not valid JSON (Expecting ',' delimiter)"),
    ('["q", "p"]', "malformed: expected a JSON object"),
    ("", "empty line"),
    ('{"positive_id": "p", "negative_ids": []}', 'malformed: needs "query_id", a string or an integer'),
    ('{"query_id": "q2", "positive_id": null, "negative_ids": []}',
     'malformed: needs "positive_id", a string or an integer'),
    ('{"query_id": " ", "positive_id": "p", "negative_ids": []}', 'malformed: "query_id" is blank'),
    ('{"query_id": "q2", "positive_id": "p"}', 'malformed: needs "negative_ids", a list of ids'),
    ('{"query_id": "q2", "positive_id": "p", "negative_ids": "a"}', 'malformed: needs "negative_ids", a list of ids'),
    ('{"query_id": "q2", "positive_id": "p", "negative_ids": ["a", true]}',
     "malformed: negative id 2 is not a non-blank string or integer"),
    ('{"query_id": "q2", "positive_id": "p", "negative_ids": ["a", ""]}',
     "malformed: negative id 2 is not a non-blank string or integer"),
    ('{"query_id": "q", "positive_id": "p", "negative_ids": ["b"]}',
     "duplicate row: query q, positive p has a row at line 1"),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, message):
    path = write(str(tmp_path / "n.jsonl"), GOOD + "\n" + line + "\n" + GOOD.replace('"q"', '"q3"') + "\n")
    with pytest.raises(UserError) as error:
        read_negatives(path)
    assert str(error.value) == f"{path}:2: {message}"


@pytest.mark.parametrize("line, message", [
    ("1\t2", "malformed: expected 3 tab-separated fields, found 2"),
    ("1\t2\t3\t4", "malformed: expected 3 tab-separated fields, found 4"),
    ("1\tx\t3", "not an integer: pid 'x'"),
    ("1\t2\t-3", "not an integer: nid '-3'"),
    ("", "empty line"),
])
def test_bad_triples_lines_name_file_and_line(tmp_path, line, message):
    path = write(str(tmp_path / "n.tsv.gz"), "1\t2\t3\n" + line + "\n1\t2\t4\n")
    with pytest.raises(UserError) as error:
        read_negatives(path)
    assert str(error.value) == f"{path}:2: {message}"


def test_a_pair_split_over_two_runs_of_lines_is_a_duplicate_row(tmp_path):
    path = write(str(tmp_path / "n.tsv"), tsv([(1, 2, 3), (1, 2, 4), (5, 6, 7), (1, 2, 8)]))
    with pytest.raises(UserError) as error:
        read_negatives(path)
    assert str(error.value) == f"{path}:4: duplicate row: query 1, positive 2 has a row at line 1"


def test_empty_files_and_the_skip_policy(tmp_path, caplog):
    with pytest.raises(UserError, match=r"n\.jsonl: no rows"):
        read_negatives(write(str(tmp_path / "n.jsonl"), ""))
    with pytest.raises(UserError, match=r"n\.tsv: no usable lines"):
        read_negatives(write(str(tmp_path / "n.tsv"), ""))
    gin.parse_config(["bad_lines_policy.bad_lines = 'skip'"])
    SKIPPED.clear()
    path = write(str(tmp_path / "s.tsv"), "1\t2\t3\n1\t2\tx\n1\t2\t4\n5\t6\n7\t8\t9\n")
    got = read_negatives(path)
    assert rows(got) == [("1", "2", ["3", "4"]), ("7", "8", ["9"])]
    assert got.negative_lines == [[1, 3], [5]]
    assert SKIPPED == {(path, "not an integer"): 1, (path, "malformed"): 1}
    assert f"skipped 2 lines of {path}" in caplog.text


def test_rows_must_be_aligned(tmp_path):
    with pytest.raises(ValueError, match="must be aligned"):
        write_negatives(str(tmp_path / "n.jsonl"), MinedNegatives(["1"], [], [["2"]]), "jsonl")
