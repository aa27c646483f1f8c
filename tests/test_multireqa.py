"""MultiReQA tasks joined from candidates.json.gz and MRQA 2019 files in the official formats."""

import os

import gin
import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers the tasks)
from data_files import CONTEXT_A, candidate_lines, jsonl, mrqa_lines, tokens, write, write_multireqa
from gtr_jax.data import pipeline as data
from gtr_jax.data.sources import multireqa
from gtr_jax.data.sources.demo import DEMO_VOCABULARY
from gtr_jax.errors import UserError
from gtr_jax.data.examples import stable_ids

LENGTHS = {"query": 12, "doc": 16}
ANSWERS = {
    "Which tower is in Paris?": "It has the Eiffel Tower.",
    "Which river crosses Paris?": "The Seine crosses it.",
    "What is the capital of Germany?": "Berlin is in Germany.",
}


@pytest.fixture
def dirs(tmp_path):
    multi, mrqa = str(tmp_path / "multireqa"), str(tmp_path / "mrqa")
    for name in ("SQuAD", "HotpotQA"):
        write_multireqa(multi, mrqa, name, "train")
    write_multireqa(multi, mrqa, "SQuAD", "test")
    gin.parse_config([
        f"MULTIREQA_DIR = '{multi}'", f"MRQA_DIR = '{mrqa}'", "multireqa_dir.directory = %MULTIREQA_DIR",
        "mrqa_dir.directory = %MRQA_DIR", f"Tokenizer.path = '{DEMO_VOCABULARY}'",
    ])
    yield multi, mrqa
    gin.clear_config()


def test_train_task_pairs_each_question_with_its_answer_sentence(dirs):
    ds = seqio.get_mixture_or_task("multireqa_squad_train").get_dataset(LENGTHS, split="train", shuffle=False)
    got = list(ds.as_numpy_iterator())
    assert len(got) == 3
    for ex, (question, answer) in zip(got, ANSWERS.items()):
        np.testing.assert_array_equal(ex["query"], tokens([question], LENGTHS["query"])[0][: len(ex["query"])])
        np.testing.assert_array_equal(ex["doc"], tokens([answer], LENGTHS["doc"])[0][: len(ex["doc"])])


def test_eval_set_ranks_the_whole_candidate_pool(dirs):
    eval_set = data.load_eval_set("multireqa_squad_eval")
    assert eval_set.query_ids == ["qa1", "qa2", "qb1"]
    assert eval_set.doc_ids == ["SQuAD_qa1_0_0", "SQuAD_qa1_0_1", "SQuAD_qa1_0_2", "SQuAD_qb1_0_0", "SQuAD_qb1_0_1"]
    assert eval_set.doc_texts[1] == "It has the Eiffel Tower."
    assert eval_set.qrels == {"qa1": {"SQuAD_qa1_0_1": 1}, "qa2": {"SQuAD_qa1_0_2": 1}, "qb1": {"SQuAD_qb1_0_0": 1}}


def test_test_only_datasets_read_the_test_folder(dirs):
    candidates, mrqa = multireqa.files("BioASQ", "test")
    assert candidates.endswith(os.path.join("test", "BioASQ", "candidates.json.gz"))
    assert mrqa.endswith(os.path.join("dev", "BioASQ.jsonl.gz"))
    with pytest.raises(UserError, match="no training split"):
        multireqa.files("BioASQ", "train")


def test_mixture_rates_are_task_sizes(dirs):
    mixture = seqio.get_mixture_or_task("multireqa_train_mixture")
    squad = seqio.get_mixture_or_task("multireqa_squad_train")
    assert mixture.get_rate(squad) == 3
    assert sorted(t.name for t in mixture.tasks) == sorted(f"multireqa_{n.lower()}_train" for n in multireqa.TRAIN)


def test_single_task_batches_come_from_one_task(dirs):
    for name in ("SearchQA", "TriviaQA", "NaturalQuestions"):
        write_multireqa(*dirs, name, "train")
    dataset_of = {
        doc_id: name
        for name in multireqa.TRAIN
        for doc_id in stable_ids([c["candidate_id"] for c in candidate_lines(name)])
    }
    batches = data.batch_iterator("multireqa_train_mixture", global_batch_size=3, feature_lengths=LENGTHS, single_task_batches=True)
    seen = set()
    for _ in range(12):
        datasets = {dataset_of[d] for d in next(batches)["doc_ids"]}
        assert len(datasets) == 1
        seen |= datasets
    assert len(seen) > 1


def rewrite(path, records):
    write(path, jsonl(records))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c, m: c.__setitem__(1, {**c[1], "response_end": len(CONTEXT_A) + 5}), r"candidates\.json\.gz:2: span outside context"),
        (lambda c, m: c.__setitem__(0, {**c[0], "candidate_id": "SQuAD_nope_0_0"}), r"candidates\.json\.gz:1: unknown id: candidate_id SQuAD_nope_0_0"),
        (lambda c, m: c.__setitem__(2, {"candidate_id": "SQuAD_qa1_0_2"}), r"candidates\.json\.gz:3: malformed"),
        (lambda c, m: c.__setitem__(3, c[0]), r"candidates\.json\.gz:4: duplicate id"),
        (lambda c, m: m[1]["qas"][0].__setitem__("question", "  "), r"SQuAD\.jsonl\.gz:2: empty text"),
        (lambda c, m: m[2]["qas"][0]["detected_answers"][0].__setitem__("char_spans", [[0, 99]]), r"SQuAD\.jsonl\.gz:3: span outside context"),
    ],
)
def test_bad_input_names_file_and_line(dirs, change, message):
    multi, mrqa = dirs
    candidates, mrqa_lines_ = candidate_lines("SQuAD"), mrqa_lines("SQuAD")
    change(candidates, mrqa_lines_)
    rewrite(os.path.join(multi, "train", "SQuAD", "candidates.json.gz"), candidates)
    rewrite(os.path.join(mrqa, "train", "SQuAD.jsonl.gz"), mrqa_lines_)
    with pytest.raises(UserError, match=message):
        multireqa.train_pairs("SQuAD")


def test_bad_json_and_utf8_lines(dirs):
    multi, _ = dirs
    path = os.path.join(multi, "train", "SQuAD", "candidates.json.gz")
    good = jsonl(candidate_lines("SQuAD")).encode()
    write(path, good + b"{not json\n")
    with pytest.raises(UserError, match=r"candidates\.json\.gz:6: malformed: not valid JSON"):
        multireqa.train_pairs("SQuAD")
    write(path, good + b'{"candidate_id": "\xff"}\n')
    with pytest.raises(UserError, match=r"candidates\.json\.gz:6: bad UTF-8"):
        multireqa.train_pairs("SQuAD")


def test_skip_policy_keeps_the_good_candidates(dirs):
    multi, _ = dirs
    candidates = candidate_lines("SQuAD")
    candidates[1]["response_end"] = 10_000  # the Eiffel Tower sentence: qa1 loses its answer
    rewrite(os.path.join(multi, "train", "SQuAD", "candidates.json.gz"), candidates)
    pairs = multireqa.train_pairs("SQuAD", bad_lines="skip")
    assert pairs.examples(range(len(pairs)))["query_id"] == ["qa2", "qb1"]
