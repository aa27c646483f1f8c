"""Any BEIR-format directory as an evaluation set.

Files: `corpus.jsonl` ({"_id", "title", "text"}; the title, when not empty, is
prepended to the text with a space, as BEIR's dense models do), `queries.jsonl`
({"_id", "text"}) and `qrels/<split>.tsv` with the header `query-id<TAB>corpus-id<TAB>score`.
Evaluated queries are those with a relevant (score > 0) document in the split's qrels.
"""

import os

import gin

from gtr_jax.errors import UserError
from gtr_jax.data.examples import EvalSet, cached, file_stamp
from gtr_jax.data.text_files import BadLines, decoded_lines, json_objects

QRELS_HEADER = "query-id\tcorpus-id\tscore"


@gin.configurable
def beir_dir(directory: str | None = None) -> str:
    """The folder holding BEIR datasets, one subfolder each; gin: `beir_dir.directory = %BEIR_DIR`."""
    if not directory:
        raise UserError("the BEIR directory is not set: set BEIR_DIR (beir_dir.directory) in gin")
    return directory


def _records(path: str, bad: BadLines, with_title: bool) -> tuple[list[str], list[str]]:
    """(ids, texts) of a BEIR corpus or queries file; repeated ids and empty texts are bad lines."""
    ids, texts, seen = [], [], set()
    for number, record in json_objects(path, bad):
        record_id, text, title = record.get("_id"), record.get("text"), record.get("title") or ""
        if not isinstance(record_id, (str, int)) or not isinstance(text, str) or not isinstance(title, str):
            bad.reject(path, number, "malformed", 'needs "_id" and a string "text" (and "title", if present, a string)')
            continue
        record_id = str(record_id)
        text = f"{title} {text}".strip() if with_title and title else text.strip()
        if not text:
            bad.reject(path, number, "empty text", f"record {record_id} has no text")
        elif record_id in seen:
            bad.reject(path, number, "duplicate id", f"_id {record_id} appears earlier")
        else:
            seen.add(record_id)
            ids.append(record_id)
            texts.append(text)
    if not ids:
        raise UserError(f"{path}: no usable records")
    return ids, texts


def _qrels(path: str, query_ids: set, doc_ids: set, bad: BadLines) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, line in decoded_lines(path, bad):
        if number == 1:
            if line != QRELS_HEADER:
                raise UserError(f"{path}:1: expected the header {QRELS_HEADER!r}, found {line!r}")
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            bad.reject(path, number, "malformed", f"expected 3 tab-separated fields, found {len(fields)}")
            continue
        qid, doc_id, score = fields
        try:
            relevance = int(score)
        except ValueError:
            bad.reject(path, number, "not an integer", f"score {score!r}")
            continue
        if qid not in query_ids:
            bad.reject(path, number, "unknown id", f"query-id {qid} is not in queries.jsonl")
        elif doc_id not in doc_ids:
            bad.reject(path, number, "unknown id", f"corpus-id {doc_id} is not in corpus.jsonl")
        else:
            qrels.setdefault(qid, {})[doc_id] = relevance
    return qrels


def _load(directory: str, split: str, policy: str) -> EvalSet:
    bad = BadLines(policy)
    doc_ids, doc_texts = _records(os.path.join(directory, "corpus.jsonl"), bad, with_title=True)
    query_ids, query_texts = _records(os.path.join(directory, "queries.jsonl"), bad, with_title=False)
    qrels = _qrels(os.path.join(directory, "qrels", f"{split}.tsv"), set(query_ids), set(doc_ids), bad)
    bad.report(f"BEIR {directory} ({split})")
    evaluated = [i for i, q in enumerate(query_ids) if any(r > 0 for r in qrels.get(q, {}).values())]
    if not evaluated:
        raise UserError(f"{os.path.join(directory, 'qrels', split + '.tsv')}: no query has a relevant document")
    return EvalSet(
        [query_ids[i] for i in evaluated],
        [query_texts[i] for i in evaluated],
        doc_ids,
        doc_texts,
        {query_ids[i]: qrels[query_ids[i]] for i in evaluated},
    )


def eval_set(directory: str, split: str = "test", bad_lines: str | None = None) -> EvalSet:
    """The queries, corpus and qrels of one split of a BEIR directory."""
    paths = [os.path.join(directory, f) for f in ("corpus.jsonl", "queries.jsonl", os.path.join("qrels", f"{split}.tsv"))]
    policy = BadLines(bad_lines).policy
    return cached(("beir", file_stamp(*paths), split, policy), lambda: _load(directory, split, policy))
