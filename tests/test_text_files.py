"""Reading (id, text) records from JSONL and TSV, and naming the file and line of bad input."""

import pytest

from gtr_jax.errors import UserError
from gtr_jax.data.text_files import read_texts


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
