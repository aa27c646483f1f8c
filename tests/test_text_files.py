"""Reading (id, text) records from JSONL and TSV, and naming the file and line of bad input."""

import gzip
import subprocess
import sys

import pytest
from etils import epath

from gtr_jax.errors import UserError
from gtr_jax.data.text_files import BadLines, decoded_lines, json_objects, read_bytes, read_texts


def write(tmp_path, name, content: bytes | str):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def test_jsonl_prepends_titles_like_beir(tmp_path):
    path = write(tmp_path, "corpus.jsonl", '{"_id": "d1", "title": "Paris", "text": "is in France"}\n'
                                         '{"_id": 7, "title": "", "text": "no title"}\n{"text": "no id"}\n')
    assert read_texts(path) == (["d1", "7", "3"], ["Paris is in France", "no title", "no id"])


def test_tsv_keeps_text_verbatim(tmp_path):
    path = write(tmp_path, "collection.tsv", "0\tThe  first passage.\r\n12\tsecond\n")
    assert read_texts(path) == (["0", "12"], ["The  first passage.", "second"])


@pytest.mark.parametrize("name,content,message", [
    ("a.jsonl", '{"text": "ok"}\n[1, 2]\n', "a.jsonl:2: expected a JSON object"),
    ("a.jsonl", '{"text": "ok"}\n{"text": 3}\n', 'a.jsonl:2: needs a string field "text"'),
    ("a.jsonl", '{"text": "ok"}\n\n{"text": "ok"}\n', "a.jsonl:2: empty line"),
    ("a.tsv", "1\tok\n2\n", "a.tsv:2: expected 2 tab-separated fields (id, text), found 1"),
    ("a.tsv", "1\tok\n2\t \n", "a.tsv:2: empty text"),
    ("a.tsv", b"1\tok\n2\t\xff\xfe bad\n", "a.tsv:2: not valid UTF-8"),
    ("a.csv", "1,ok\n", "a.csv: unknown input format"),
    ("a.tsv", "", "a.tsv: no records"),
])
def test_bad_input_names_file_and_line(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(UserError) as error:
        read_texts(path)
    assert str(error.value) == f"{tmp_path}/{message}" or str(error.value).startswith(f"{tmp_path}/{message}")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="nope.tsv: no such file"):
        read_texts(str(tmp_path / "nope.tsv"))
    (tmp_path / "dir.tsv").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        read_texts(str(tmp_path / "dir.tsv"))


JSONL = '{"_id": "d1", "title": "Paris", "text": "is in France"}\n{"_id": "d2", "text": "café — ünïcödé"}\n'
TSV = "0\tThe  first passage.\r\n12\tsecond\n"


def plain_and_gzipped(tmp_path, name, content: str):
    """The same content as NAME and as NAME.gz (gzip.compress: the standard library's own writer)."""
    plain = tmp_path / name
    plain.write_text(content, encoding="utf-8")
    gzipped = tmp_path / f"{name}.gz"
    gzipped.write_bytes(gzip.compress(content.encode()))
    return plain, gzipped


@pytest.mark.parametrize("as_path", [str, epath.Path], ids=["str", "epath"])
def test_gzipped_files_read_like_plain_ones(tmp_path, as_path):
    plain, gzipped = plain_and_gzipped(tmp_path, "corpus.jsonl", JSONL)
    assert read_bytes(as_path(gzipped)) == read_bytes(as_path(plain)) == JSONL.encode()
    expected = (["d1", "d2"], ["Paris is in France", "café — ünïcödé"])
    assert read_texts(as_path(gzipped)) == read_texts(as_path(plain)) == expected
    objects = [list(json_objects(as_path(p), BadLines("error"))) for p in (plain, gzipped)]
    assert objects[0] == objects[1] == [(1, {"_id": "d1", "title": "Paris", "text": "is in France"}),
                                        (2, {"_id": "d2", "text": "café — ünïcödé"})]
    plain, gzipped = plain_and_gzipped(tmp_path, "collection.tsv", TSV)
    expected = (["0", "12"], ["The  first passage.", "second"])
    assert read_texts(as_path(gzipped)) == read_texts(as_path(plain)) == expected
    lines = [list(decoded_lines(as_path(p), BadLines("error"))) for p in (plain, gzipped)]
    assert lines[0] == lines[1] == [(1, "0\tThe  first passage."), (2, "12\tsecond")]


def test_errors_in_gzipped_files_name_file_and_line(tmp_path):
    _, gzipped = plain_and_gzipped(tmp_path, "a.jsonl", '{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"a\.jsonl\.gz:2: expected a JSON object"):
        read_texts(str(gzipped))
    bad = BadLines("skip")
    assert [n for n, _ in json_objects(gzipped, bad)] == [1]
    assert dict(bad.counts) == {(str(gzipped), "malformed"): 1}


@pytest.mark.parametrize("content, problem", [
    (b"1\tnot gzipped\n", "Not a gzipped file"),
    (gzip.compress(b"1\ttruncated\n" * 100)[:40], "end-of-stream marker"),
])
def test_unreadable_gzip_is_one_user_error(tmp_path, content, problem):
    path = tmp_path / "a.tsv.gz"
    path.write_bytes(content)
    for read in (read_bytes, read_texts, lambda p: list(decoded_lines(p, BadLines("skip")))):
        with pytest.raises(UserError, match=rf"^{tmp_path}/a\.tsv\.gz: cannot read \(.*{problem}.*\)$"):
            read(str(path))


def test_missing_gzipped_file(tmp_path):
    with pytest.raises(UserError, match=r"nope\.jsonl\.gz: no such file"):
        list(json_objects(epath.Path(tmp_path) / "nope.jsonl.gz", BadLines("error")))


def test_reading_files_imports_no_tensorflow(tmp_path, spm_path):
    _, gzipped = plain_and_gzipped(tmp_path, "a.tsv", TSV)
    code = ("import sys; from gtr_jax.data import text_files, tsv, vocab; "
            f"text_files.read_texts({str(gzipped)!r}); vocab.Tokenizer({spm_path!r}); "
            f"tsv.read_tsv({str(gzipped)!r}, ('id', 'text'), int_fields=('id',), bad=text_files.BadLines()); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
