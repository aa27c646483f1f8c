"""MultiReQA: sentence-level answer retrieval over the MRQA 2019 contexts.

Files: MultiReQA's `candidates.json.gz` (gin macro MULTIREQA_DIR, laid out as the
MultiReQA repository's data/ folder: {train,dev,test}/<Name>/candidates.json.gz), whose
lines {"candidate_id", "response_start", "response_end"} are character spans of one
sentence of an MRQA context, and the MRQA 2019 files (gin macro MRQA_DIR, laid out as
{train,dev}/<Name>.jsonl.gz): a header line, then one context per line with its
questions {"qid", "question", "detected_answers": [{"char_spans": [[start, end]]}]}.

A candidate id is "<Name>_<qid>_<i>_<j>": the qid of a question asked about its
context, then sentence counters; the join strips the name and then `_<digits>` groups
until what is left is a qid of the MRQA file. A sentence answers a question of its
context when it overlaps one of the question's answer spans (MRQA's ends are inclusive).
The evaluation pool of a split is every candidate of that split.
"""

import logging
import os

import gin
from etils import epath

from gtr_jax.errors import UserError
from gtr_jax.data.examples import EvalSet, Pairs, cached, file_stamp, positive_pairs
from gtr_jax.data.text_files import BadLines, json_objects

TRAIN = ("SearchQA", "TriviaQA", "HotpotQA", "NaturalQuestions", "SQuAD")
TEST_ONLY = ("BioASQ", "RelationExtraction", "TextbookQA")
DATASETS = TRAIN + TEST_ONLY


@gin.configurable
def multireqa_dir(directory: str | None = None) -> str:
    """MultiReQA's data/ folder; gin: `multireqa_dir.directory = %MULTIREQA_DIR`."""
    if not directory:
        raise UserError("the MultiReQA directory is not set: set MULTIREQA_DIR (multireqa_dir.directory) in gin")
    return directory


@gin.configurable
def mrqa_dir(directory: str | None = None) -> str:
    """The MRQA 2019 folder with train/ and dev/; gin: `mrqa_dir.directory = %MRQA_DIR`."""
    if not directory:
        raise UserError("the MRQA directory is not set: set MRQA_DIR (mrqa_dir.directory) in gin")
    return directory


def files(name: str, split: str, multireqa: str | None = None, mrqa: str | None = None) -> tuple[str, str]:
    """(candidates file, MRQA file) of a dataset's 'train' or 'test' split.

    MultiReQA's test sets are built from MRQA's dev files: dev/ for the five training
    datasets, test/ for the three test-only ones.
    """
    if name not in DATASETS:
        raise UserError(f"unknown MultiReQA dataset {name!r}; expected one of {DATASETS}")
    if split == "train" and name not in TRAIN:
        raise UserError(f"MultiReQA {name} has no training split")
    folder = "train" if split == "train" else ("test" if name in TEST_ONLY else "dev")
    candidates = os.path.join(multireqa or multireqa_dir(), folder, name, "candidates.json.gz")
    mrqa_folder = os.path.join(mrqa or mrqa_dir(), "train" if split == "train" else "dev")
    plain = os.path.join(mrqa_folder, f"{name}.jsonl")
    return candidates, plain if epath.Path(plain).exists() else plain + ".gz"


def _spans(value, context_length: int):
    """[(start, end)] of MRQA char_spans (end inclusive), or None if any is invalid."""
    try:
        spans = [(int(s), int(e)) for s, e in value]
    except (TypeError, ValueError):
        return None
    return spans if all(0 <= s <= e < context_length for s, e in spans) else None


def _read_mrqa(path: str, bad: BadLines):
    """(contexts, {qid: (context index, question, answer spans)}) in file order."""
    contexts, questions = [], {}
    for number, record in json_objects(path, bad, skip_first=True):
        context, qas = record.get("context"), record.get("qas")
        if not isinstance(context, str) or not isinstance(qas, list):
            bad.reject(path, number, "malformed", 'needs "context" (a string) and "qas" (a list)')
            continue
        parsed, problem = [], None
        for qa in qas:
            qid, question = (qa.get("qid"), qa.get("question")) if isinstance(qa, dict) else (None, None)
            answers = qa.get("detected_answers") if isinstance(qa, dict) else None
            if not isinstance(qid, str) or not isinstance(question, str) or not isinstance(answers, list):
                problem = ("malformed", 'each of "qas" needs "qid", "question" and "detected_answers"')
            elif not question.strip():
                problem = ("empty text", f"question {qid} is empty")
            elif qid in questions or any(qid == p[0] for p in parsed):
                problem = ("duplicate id", f"qid {qid} appears earlier")
            else:
                spans = [_spans(a.get("char_spans") if isinstance(a, dict) else None, len(context)) for a in answers]
                if any(s is None for s in spans):
                    problem = ("span outside context", f"an answer span of question {qid} is not inside the context")
                else:
                    parsed.append((qid, question, [span for group in spans for span in group]))
            if problem:
                break
        if problem:
            bad.reject(path, number, *problem)
            continue
        for qid, question, spans in parsed:
            questions[qid] = (len(contexts), question, spans)
        contexts.append(context)
    return contexts, questions


def _context_qid(candidate_id: str, name: str, questions: dict) -> str | None:
    """The qid a candidate id starts with (see the module docstring), or None."""
    rest = candidate_id.removeprefix(f"{name}_")
    while rest not in questions:
        head, _, tail = rest.rpartition("_")
        if not head or not tail.isdigit():
            return None
        rest = head
    return rest


def _load(name: str, candidates_path: str, mrqa_path: str, policy: str) -> EvalSet:
    bad = BadLines(policy)
    contexts, questions = _read_mrqa(mrqa_path, bad)
    doc_ids, doc_texts, doc_spans = [], [], []
    by_context: dict[int, list[int]] = {}
    seen = set()
    for number, record in json_objects(candidates_path, bad):
        cid, start, end = record.get("candidate_id"), record.get("response_start"), record.get("response_end")
        if not isinstance(cid, str) or not isinstance(start, int) or not isinstance(end, int):
            needs = 'needs "candidate_id" (a string), "response_start" and "response_end" (integers)'
            bad.reject(candidates_path, number, "malformed", needs)
            continue
        if cid in seen:
            bad.reject(candidates_path, number, "duplicate id", f"candidate_id {cid} appears earlier")
            continue
        qid = _context_qid(cid, name, questions)
        if qid is None:
            problem = f"candidate_id {cid} names no question of {os.path.basename(mrqa_path)}"
            bad.reject(candidates_path, number, "unknown id", problem)
            continue
        context_index = questions[qid][0]
        if not 0 <= start < end <= len(contexts[context_index]):
            problem = f"[{start}, {end}) is not inside the {len(contexts[context_index])}-character context"
            bad.reject(candidates_path, number, "span outside context", problem)
            continue
        text = contexts[context_index][start:end].strip()
        if not text:
            bad.reject(candidates_path, number, "empty text", f"candidate {cid} is blank")
            continue
        seen.add(cid)
        by_context.setdefault(context_index, []).append(len(doc_ids))
        doc_ids.append(cid)
        doc_texts.append(text)
        doc_spans.append((start, end))
    if not doc_ids:
        raise UserError(f"{candidates_path}: no usable candidates")
    bad.report(f"MultiReQA {name}")
    qrels, unanswered = {}, 0
    for qid, (context_index, _, spans) in questions.items():
        answers = {
            doc_ids[d]: 1
            for d in by_context.get(context_index, [])
            if any(doc_spans[d][0] <= e and s < doc_spans[d][1] for s, e in spans)
        }
        if answers:
            qrels[qid] = answers
        else:
            unanswered += 1
    if unanswered:
        # Not bad input: MRQA questions whose answer no candidate sentence contains exist.
        logging.info(
            "MultiReQA %s: %d of %d questions have no answer sentence among the candidates; they are left out",
            name, unanswered, len(questions),
        )
    query_ids = list(qrels)
    return EvalSet(query_ids, [questions[q][1] for q in query_ids], doc_ids, doc_texts, qrels)


def eval_set(
    name: str, split: str = "test", multireqa: str | None = None, mrqa: str | None = None, bad_lines: str | None = None
) -> EvalSet:
    """Questions with an answer sentence, ranked over every candidate sentence of the split."""
    candidates_path, mrqa_path = files(name, split, multireqa, mrqa)
    policy = BadLines(bad_lines).policy
    key = ("multireqa", name, file_stamp(candidates_path, mrqa_path), policy)
    return cached(key, lambda: _load(name, candidates_path, mrqa_path, policy))


def train_pairs(name: str, multireqa: str | None = None, mrqa: str | None = None, bad_lines: str | None = None) -> Pairs:
    """(question, answer sentence) for every answer sentence of every training question."""
    candidates_path, mrqa_path = files(name, "train", multireqa, mrqa)
    key = ("multireqa pairs", name, file_stamp(candidates_path, mrqa_path), BadLines(bad_lines).policy)
    return cached(key, lambda: positive_pairs(eval_set(name, "train", multireqa, mrqa, bad_lines)))


def num_train_pairs(name: str) -> int:
    """Training pairs of a dataset (what the mixture's rate by size uses)."""
    return len(train_pairs(name))


