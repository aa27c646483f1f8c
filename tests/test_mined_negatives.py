"""Training on mined negatives: the join with a pairs task, its policies and errors, gin runs, kill -9."""

import json
import math
import pathlib
import sys

import gin
import numpy as np
import pytest

import tasks  # noqa: F401  (registers the tasks and mined_negatives_task)
from data_files import tokens, tsv, write
from gtr_jax.cli import main as cli
from gtr_jax.data import pipeline
from gtr_jax.data.examples import Column, Pairs, stable_ids
from gtr_jax.data.features import TokenizerVocabulary
from gtr_jax.data.negatives_file import MinedNegatives, write_negatives
from gtr_jax.data.sources import demo
from gtr_jax.data.sources.demo import DEMO_VOCABULARY
from gtr_jax.errors import UserError
from tasks.mined_negatives import mined_negatives_task
from test_trainer import TESTS, assert_resumes_bit_equal_after_kill, subprocess_env

LENGTHS = {"query": 16, "doc": 24}
QUERIES = {"10": "what is the capital of france", "11": "where is the eiffel tower", "12": "capital of germany",
           "13": "a query without pairs"}
PASSAGES = {"0": "Paris is the capital of France.", "1": "The Eiffel Tower is in Paris.",
            "2": "Berlin is the capital of Germany.", "3": "The Rhine is a river.", "4": "Madrid is in Spain.",
            "5": "Rome is in Italy.", "6": "The Alps are mountains.", "7": "France is in Europe."}
PAIRS = [("10", "0"), ("11", "1"), ("12", "2"), ("10", "7")]  # query 10 has two positives
ROWS = {("10", "0"): ["2", "4", "3", "5"], ("11", "1"): ["6", "0", "5"], ("12", "2"): ["3", "5", "4"],
        ("10", "7"): ["1", "6", "5"]}
BASE = "mined_test_pairs"


@pytest.fixture(autouse=True)
def demo_vocabulary():
    gin.clear_config()
    gin.parse_config([f"Tokenizer.path = '{DEMO_VOCABULARY}'"])
    pipeline.register_task(BASE, "train", base_pairs, vocabulary=TokenizerVocabulary(DEMO_VOCABULARY))
    yield
    gin.clear_config()


def base_pairs() -> Pairs:
    query_ids, passage_ids = list(QUERIES), list(PASSAGES)
    return Pairs(Column(query_ids, list(QUERIES.values())), Column(passage_ids, list(PASSAGES.values())),
                 np.array([query_ids.index(q) for q, _ in PAIRS]), np.array([passage_ids.index(p) for _, p in PAIRS]))


def write_rows(path: str, rows: dict) -> str:
    mined = MinedNegatives([q for q, _ in rows], [p for _, p in rows], list(rows.values()))
    write_negatives(path, mined, "jsonl" if ".jsonl" in path else "qidpidtriples")
    return path


def message_of(error) -> str:
    """The error's own line (gin adds one naming the configurable it was raised in)."""
    return str(error.value).splitlines()[0]


def loaded(task):
    pairs = pipeline.SOURCES[task].pairs()
    return pairs.examples(np.arange(len(pairs)))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", ["neg.jsonl", "neg.tsv.gz"])
def test_every_negative_has_the_text_of_its_id(tmp_path, k, name):
    task = mined_negatives_task(BASE, write_rows(str(tmp_path / name), ROWS), k)
    assert task == BASE + "_mined"
    got = loaded(task)
    assert list(zip(got["query_id"], got["doc_id"])) == PAIRS
    for i, pair in enumerate(PAIRS):
        assert got["negative_ids"][i] == ROWS[pair][:k]
        assert got["negatives"][i] == [PASSAGES[n] for n in ROWS[pair][:k]]
    batch = next(pipeline.batch_iterator(task, global_batch_size=4, feature_lengths=LENGTHS, shuffle=False))
    assert batch["negative_tokens"].shape == (4, k, 24)
    for i, pair in enumerate(PAIRS):
        np.testing.assert_array_equal(batch["negative_tokens"][i], tokens([PASSAGES[n] for n in ROWS[pair][:k]], 24))
        np.testing.assert_array_equal(batch["negative_ids"][i], stable_ids(ROWS[pair][:k]))
    np.testing.assert_array_equal(batch["query_tokens"], tokens([QUERIES[q] for q, _ in PAIRS], 16))


SHORT = {("10", "0"): ["2", "4", "3"], ("11", "1"): ["6"], ("10", "7"): ["1", "6", "5"]}  # (12, 2) has no row


def test_short_rows_error_names_the_first_short_row(tmp_path):
    path = write_rows(str(tmp_path / "neg.jsonl"), SHORT)
    with pytest.raises(UserError) as error:
        loaded(mined_negatives_task(BASE, path, 3))
    assert message_of(error) == (f"{path}:2: query 11, positive 1 has 1 negatives, fewer than num_negatives 3 "
                                f"(1 more examples of task {BASE}_mined have fewer than 3; "
                                "short_rows='skip' or 'repeat' accepts them)")
    path = write_rows(str(tmp_path / "neg2.jsonl"), {pair: ROWS[pair] for pair in PAIRS if pair != ("11", "1")})
    with pytest.raises(UserError) as error:
        loaded(mined_negatives_task(BASE, path, 3))
    assert message_of(error).startswith(f"{path}: no row for query 11, positive 1 of task {BASE}_mined (0 more")


def test_short_rows_skip_and_repeat_are_counted(tmp_path, caplog):
    path = write_rows(str(tmp_path / "neg.tsv"), SHORT)
    got = loaded(mined_negatives_task(BASE, path, 3, short_rows="skip"))
    assert list(zip(got["query_id"], got["doc_id"])) == [("10", "0"), ("10", "7")]
    assert got["negative_ids"] == [SHORT["10", "0"], SHORT["10", "7"]]
    assert (f"task {BASE}_mined: 2 examples with 3 negatives, 1 left out with fewer than 3, "
            f"1 left out without a row from {path}") in caplog.text
    got = loaded(mined_negatives_task(BASE, path, 3, short_rows="repeat", name="repeated"))
    assert list(zip(got["query_id"], got["doc_id"])) == [("10", "0"), ("11", "1"), ("10", "7")]
    assert got["negative_ids"][1] == ["6", "6", "6"] and got["negatives"][1] == [PASSAGES["6"]] * 3
    path = write_rows(str(tmp_path / "neg.jsonl"), {**SHORT, ("11", "1"): ["6", "5"]})
    got = loaded(mined_negatives_task(BASE, path, 5, short_rows="repeat", name="repeated"))
    assert got["negative_ids"] == [["2", "4", "3", "2", "4"], ["6", "5", "6", "5", "6"], ["1", "6", "5", "1", "6"]]
    assert "0 examples with 5 negatives, 3 with fewer, repeated to 5, 1 left out without a row" in caplog.text


@pytest.mark.parametrize("row, message", [
    ((("14", "0"), ["2"]), f"unknown id: query 14 has no pair in task {BASE}_mined"),
    ((("13", "0"), ["2"]), f"unknown id: query 13 has no pair in task {BASE}_mined"),
    ((("11", "9"), ["2"]), f"unknown id: positive 9 is not a passage of task {BASE}_mined"),
    ((("11", "2"), ["3"]), f"unknown pair: 2 is not a positive of query 11 in task {BASE}_mined"),
    ((("11", "1"), ["2", "99"]), f"unknown id: negative 99 is not a passage of task {BASE}_mined"),
    ((("10", "0"), ["3", "7"]), f"positive as negative: negative 7 is a positive of query 10 in task {BASE}_mined"),
])
@pytest.mark.parametrize("name", ["neg.jsonl", "neg.tsv"])
def test_bad_rows_name_file_and_line(tmp_path, row, message, name):
    (pair, negatives) = row
    rows = {("12", "2"): ["3"], pair: negatives}
    path = write_rows(str(tmp_path / name), rows)
    # In qidpidtriples a negative has its own line: the second one is on line 3.
    line = 3 if name.endswith(".tsv") and message.startswith(("unknown id: negative", "positive as")) else 2
    with pytest.raises(UserError) as error:
        loaded(mined_negatives_task(BASE, path, 1, short_rows="skip"))
    assert message_of(error) == f"{path}:{line}: {message}"


def test_option_mistakes_are_one_line(tmp_path):
    path = write_rows(str(tmp_path / "neg.jsonl"), ROWS)
    with pytest.raises(UserError, match=r"^num_negatives must be an integer >= 1, not 0"):
        mined_negatives_task(BASE, path, 0)
    with pytest.raises(UserError, match=r"^short_rows must be one of \('error', 'skip', 'repeat'\), not 'drop'"):
        mined_negatives_task(BASE, path, 1, short_rows="drop")
    with pytest.raises(UserError, match=r"unknown task 'nowhere' \(a mixture cannot be joined\)"):
        mined_negatives_task("nowhere", path, 1)
    with pytest.raises(UserError, match=r"^mined_negatives_task.name must be"):
        mined_negatives_task(BASE, path, 1, name="a b")
    pipeline.register_task("mined_test_triples", "train", lambda: Pairs(
        Column(["q"], ["q"]), Column(["p"], ["p"]), np.array([0]), np.array([0]), Column(["n"], ["n"]),
        np.array([[0]])), num_negatives=1)
    with pytest.raises(UserError, match=r"its pairs task already has hard negatives"):
        loaded(mined_negatives_task("mined_test_triples", path, 1))


def demo_negatives(path: str, k: int) -> str:
    """For each demo_train pair, the k passages after its positive in corpus order: a fixed, checkable file."""
    pairs = demo.pairs("train")
    ids = list(pairs.docs.ids)
    rows = {}
    for q, d in zip(pairs.query_rows, pairs.doc_rows):
        rows[pairs.queries.ids[q], ids[d]] = [ids[(d + j) % len(ids)] for j in range(1, k + 1)]
    return write_rows(path, rows)


# The demo run made small: a few steps of the tiny model on short texts.
SMALL = ["--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS={'query': 16, 'doc': 24}",
         "--gin.ModelConfig.query_max_length=16", "--gin.ModelConfig.doc_max_length=24",
         "--gin.ModelConfig.embed_dim=32",
         "--gin.train.log_every=1", "--gin.train.progress=False", "--gin.WARMUP_STEPS=0"]
BM25_RUN = ["--gin_file=runs/demo_cpu.gin", "--gin_file=runs/hard_negatives_bm25.gin"]


def cli_train(*argv) -> int:
    gin.clear_config()
    return cli.main(["train", *argv])


@pytest.mark.parametrize("k", [1, 3])
def test_gtr_jax_train_on_the_demo_with_mined_negatives(tmp_path, capsys, k):
    negatives = demo_negatives(str(tmp_path / "negatives.jsonl"), k)
    model_dir = tmp_path / "model"
    common = [*BM25_RUN, f"--gin.MODEL_DIR={model_dir}", f"--gin.NEGATIVES_FILE={negatives}",
              f"--gin.NUM_NEGATIVES={k}", *SMALL]
    assert cli_train(*common, "--gin.train.dry_run=True") == 0, capsys.readouterr().err
    assert f"negative_tokens (8, {k}, 24)" in capsys.readouterr().out
    assert cli_train(*common) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in pathlib.Path(model_dir, "metrics.jsonl").read_text().splitlines()]
    losses = {row["step"]: row["loss"] for row in rows if "loss" in row}
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values()), losses
    operative = (model_dir / "operative_config.gin").read_text()
    assert f"NUM_NEGATIVES = {k}" in operative and "mined_negatives_task.path = %NEGATIVES_FILE" in operative
    if k == 1:
        # One self-mined round starts from this model: its run file builds everything.
        self_mined = ["--gin_file=runs/demo_cpu.gin", "--gin_file=runs/self_mined.gin",
                      f"--gin.INIT_CHECKPOINT={model_dir}",
                      f"--gin.MODEL_DIR={tmp_path / 'round2'}", f"--gin.NEGATIVES_FILE={negatives}", *SMALL]
        assert cli_train(*self_mined, "--gin.train.dry_run=True") == 0, capsys.readouterr().err
        assert "negative_tokens (8, 1, 24)" in capsys.readouterr().out


def test_bad_negatives_files_stop_gtr_jax_train_with_file_and_line(tmp_path, capsys):
    pairs = demo.pairs("train")
    query, positive = pairs.queries.ids[pairs.query_rows[0]], pairs.docs.ids[pairs.doc_rows[0]]
    unknown = write(str(tmp_path / "unknown.jsonl"), json.dumps(
        {"query_id": query, "positive_id": positive, "negative_ids": ["no.such.passage"]}) + "\n")
    malformed = write(str(tmp_path / "malformed.tsv"), tsv([(1, 2, 3), (1, 2)]))
    expected = {
        unknown: f"{unknown}:1: unknown id: negative no.such.passage is not a passage of task demo_train_mined",
        malformed: f"{malformed}:2: malformed: expected 3 tab-separated fields, found 2",
    }
    for path, message in expected.items():
        argv = [*BM25_RUN, f"--gin.MODEL_DIR={tmp_path / 'model'}", f"--gin.NEGATIVES_FILE={path}", *SMALL]
        assert cli_train(*argv) == 1
        assert capsys.readouterr().err == f"gtr-jax train: error: {message}\n"
        assert not (tmp_path / "model").exists()  # stopped before writing anything


def test_a_run_on_mined_negatives_resumes_bit_equal_after_kill(tmp_path):
    negatives = demo_negatives(str(tmp_path / "negatives.jsonl"), 2)
    run = write(str(tmp_path / "slow.gin"), "import slow_input\n"
                "train.input_fn = @slowed_input\nslowed_input.input_fn = @batch_iterator\n")

    def command(model_dir):
        return [sys.executable, "-m", "gtr_jax", "train", *BM25_RUN, f"--gin_file={run}",
                f"--gin_search_paths={TESTS}", f"--gin.MODEL_DIR={model_dir}", f"--gin.NEGATIVES_FILE={negatives}",
                "--gin.NUM_NEGATIVES=2", *SMALL, "--gin.TRAIN_STEPS=24", "--gin.train.checkpoint_every=4",
                "--gin.slowed_input.step_delay=0.15"]

    assert_resumes_bit_equal_after_kill(tmp_path, command, subprocess_env())
