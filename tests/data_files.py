"""Small data sets written in the official file formats, for the data pipeline tests."""

import gzip
import json
import os

from gtr_jax.data.sources.demo import DEMO_VOCABULARY
from gtr_jax.data.vocab import Tokenizer, pad_batch

PASSAGES = {
    0: "Paris is the capital and most populous city of France.",
    1: "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    2: "Berlin is the capital of Germany.",
    3: "The Rhine flows through Germany and the Netherlands.",
}
QUERIES_TRAIN = {10: "what is the capital of france", 11: "where is the eiffel tower", 12: "capital of germany"}
QUERIES_DEV = {20: "which river flows through germany", 21: "city of the eiffel tower"}
QRELS_TRAIN = [(10, 0, 1), (11, 1, 1), (12, 2, 1), (12, 3, 0)]
QRELS_DEV = [(20, 3, 1), (21, 1, 1), (21, 0, 1)]
TRIPLES = [
    ("what is the capital of france", PASSAGES[0], PASSAGES[2]),
    ("capital of germany", PASSAGES[2], PASSAGES[3]),
]
QIDPIDTRIPLES = [(10, 0, 2), (11, 1, 3), (12, 2, 0)]


def write(path: str, text: str | bytes) -> str:
    """Write text (or bytes) to path, creating folders; returns the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(data)
    return path


def tsv(rows) -> str:
    """Lines of tab-joined fields."""
    return "".join("\t".join(str(field) for field in row) + "\n" for row in rows)


def write_msmarco(directory: str) -> str:
    """An MS MARCO passage directory with every file the tasks read."""
    write(os.path.join(directory, "collection.tsv"), tsv(PASSAGES.items()))
    write(os.path.join(directory, "queries.train.tsv"), tsv(QUERIES_TRAIN.items()))
    write(os.path.join(directory, "queries.dev.small.tsv"), tsv(QUERIES_DEV.items()))
    write(os.path.join(directory, "qrels.train.tsv"), tsv((q, 0, p, r) for q, p, r in QRELS_TRAIN))
    write(os.path.join(directory, "qrels.dev.small.tsv"), tsv((q, 0, p, r) for q, p, r in QRELS_DEV))
    write(os.path.join(directory, "triples.train.small.tsv"), tsv(TRIPLES))
    write(os.path.join(directory, "qidpidtriples.train.full.2.tsv"), tsv(QIDPIDTRIPLES))
    return directory


# Two MRQA contexts: sentences are the candidates; answers are inclusive character spans.
CONTEXT_A = "Paris is in France. It has the Eiffel Tower. The Seine crosses it."
CONTEXT_B = "Berlin is in Germany. It is the capital."


def mrqa_lines(name: str) -> list[dict]:
    """Header and context records of a tiny MRQA 2019 file."""

    def qa(qid, question, context, answer):
        start = context.index(answer)
        return {"qid": qid, "question": question, "detected_answers": [{"char_spans": [[start, start + len(answer) - 1]], "text": answer}]}

    return [
        {"header": {"dataset": name, "split": "train"}},
        {
            "context": CONTEXT_A,
            "qas": [
                qa("qa1", "Which tower is in Paris?", CONTEXT_A, "Eiffel Tower"),
                qa("qa2", "Which river crosses Paris?", CONTEXT_A, "Seine"),
            ],
        },
        {"context": CONTEXT_B, "qas": [qa("qb1", "What is the capital of Germany?", CONTEXT_B, "Berlin")]},
    ]


def candidate_lines(name: str) -> list[dict]:
    """MultiReQA candidates: every sentence of both contexts, ids built from a qid of the context."""
    out = []
    for qid, context in (("qa1", CONTEXT_A), ("qb1", CONTEXT_B)):
        end = 0
        for i, sentence in enumerate(s.strip() + "." for s in context.split(".")[:-1]):
            begin = context.index(sentence, end)
            end = begin + len(sentence)
            out.append({"candidate_id": f"{name}_{qid}_0_{i}", "response_start": begin, "response_end": end})
    return out


def jsonl(records) -> str:
    """One JSON object per line."""
    return "".join(json.dumps(r) + "\n" for r in records)


def write_multireqa(multireqa_dir: str, mrqa_dir: str, name: str, split: str = "train") -> None:
    """candidates.json.gz and the MRQA file of one dataset's split, in the official layouts."""
    folder = "train" if split == "train" else "dev"
    write(os.path.join(multireqa_dir, folder, name, "candidates.json.gz"), jsonl(candidate_lines(name)))
    write(os.path.join(mrqa_dir, folder, f"{name}.jsonl.gz"), jsonl(mrqa_lines(name)))


def write_beir(directory: str) -> str:
    """A BEIR-format dataset: corpus with titles, queries, and test qrels with a 0 judgment."""
    write(
        os.path.join(directory, "corpus.jsonl"),
        jsonl([
            {"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."},
            {"_id": "d2", "title": "", "text": "Berlin is the capital of Germany."},
            {"_id": "d3", "title": "Rhine", "text": "A river in Europe."},
        ]),
    )
    queries = [{"_id": "q1", "text": "capital of france"}, {"_id": "q2", "text": "german capital"}, {"_id": "q3", "text": "unjudged"}]
    write(os.path.join(directory, "queries.jsonl"), jsonl(queries))
    write(os.path.join(directory, "qrels", "test.tsv"), "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n")
    return directory


def tokens(texts: list[str], length: int):
    """The reference: vocab.Tokenizer's ids (EOS appended, 0-padded) with the demo vocabulary."""
    return pad_batch(Tokenizer(DEMO_VOCABULARY).encode(texts, length), length)
