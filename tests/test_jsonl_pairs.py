"""A user's JSONL training pairs: the reader, its bad-line errors, the task factory and a gin training run."""

import itertools
import json
import math
import pathlib

import gin
import numpy as np
import pytest

import tasks  # noqa: F401  (registers the tasks and jsonl_pairs_task)
from data_files import jsonl, tokens, write
from gtr_jax.cli import main as cli
from gtr_jax.data import pipeline
from gtr_jax.data.examples import stable_ids
from gtr_jax.data.sources import jsonl_pairs
from gtr_jax.data.sources.demo import DEMO_VOCABULARY
from gtr_jax.data.text_files import SKIPPED
from gtr_jax.errors import UserError
from tasks.jsonl_pairs import jsonl_pairs_task

LENGTHS = {"query": 16, "doc": 32}
LINES = [
    {"query": "what is the capital of france", "positive": "Paris is the capital of France.",
     "negatives": ["Berlin is the capital of Germany.", "The Rhine is a river."],
     "query_id": "q1", "positive_id": 7, "negative_ids": ["d2", 9]},
    {"query": "capital of germany", "positive": "Berlin is the capital of Germany.",
     "negatives": ["Paris is the capital of France.", "Madrid is in Spain."]},
    {"query": "where is the eiffel tower", "positive": "The Eiffel Tower is in Paris.",
     "negatives": ["The Rhine is a river.", "Berlin is the capital of Germany."], "query_id": 3},
]


@pytest.fixture(autouse=True)
def demo_vocabulary():
    gin.clear_config()
    gin.parse_config([f"Tokenizer.path = '{DEMO_VOCABULARY}'"])
    yield
    gin.clear_config()


def first_batch(task, size):
    return next(pipeline.batch_iterator(task, global_batch_size=size, feature_lengths=LENGTHS, shuffle=False))


def test_texts_ids_and_negatives_come_out_as_written(tmp_path):
    task = jsonl_pairs_task("written", write(str(tmp_path / "pairs.jsonl"), jsonl(LINES)))
    assert task == "jsonl_written"
    batch = first_batch(task, 3)
    np.testing.assert_array_equal(batch["query_tokens"], tokens([line["query"] for line in LINES], 16))
    np.testing.assert_array_equal(batch["doc_tokens"], tokens([line["positive"] for line in LINES], 32))
    assert batch["negative_tokens"].shape == (3, 2, 32)
    for i, line in enumerate(LINES):
        np.testing.assert_array_equal(batch["negative_tokens"][i], tokens(line["negatives"], 32))
    # Given ids as strings; absent ones are the texts.
    np.testing.assert_array_equal(batch["query_ids"], stable_ids(["q1", LINES[1]["query"], "3"]))
    np.testing.assert_array_equal(batch["doc_ids"], stable_ids(["7", LINES[1]["positive"], LINES[2]["positive"]]))
    np.testing.assert_array_equal(batch["negative_ids"][0], stable_ids(["d2", "9"]))
    np.testing.assert_array_equal(batch["negative_ids"][2], stable_ids(LINES[2]["negatives"]))


def test_derived_ids_make_identical_texts_equal(tmp_path):
    lines = [
        {"query": "a question", "positive": "Shared passage.", "negatives": ["Other passage."]},
        {"query": "a question", "positive": "Other passage.", "negatives": ["Shared passage."]},
        {"query": "another question", "positive": "Shared passage.", "negatives": ["A third passage."]},
    ]
    path = write(str(tmp_path / "pairs.jsonl"), jsonl(lines))
    pairs = jsonl_pairs.read_pairs(path)
    assert len(pairs.queries) == 2 and len(pairs.docs) == 3  # each distinct text once
    batch = first_batch(jsonl_pairs_task("dups", path), 3)
    q, d, n = batch["query_ids"], batch["doc_ids"], batch["negative_ids"][:, 0]
    assert q[0] == q[1] != q[2]
    assert d[0] == d[2] == n[1] and d[1] == n[0] and n[2] not in d
    assert len(set(d.tolist()) | set(n.tolist())) == 3


def test_pairs_without_negatives(tmp_path):
    path = write(str(tmp_path / "pairs.jsonl"), jsonl([{"query": "q one", "positive": "p one"},
                                                      {"query": "q two", "positive": "p two", "negatives": []}]))
    batch = first_batch(jsonl_pairs_task("plain", path), 2)
    assert set(batch) == {"query_tokens", "doc_tokens", "query_ids", "doc_ids"}
    np.testing.assert_array_equal(batch["doc_tokens"], tokens(["p one", "p two"], 32))


def test_num_negatives_keeps_the_first_k(tmp_path):
    lines = [{**LINES[0], "negatives": ["n1", "n2", "n3"], "negative_ids": ["a", "b", "c"]},
             {**LINES[1], "negatives": ["m1", "m2"]}]
    path = write(str(tmp_path / "pairs.jsonl"), jsonl(lines))
    batch = first_batch(jsonl_pairs_task("cut", path, num_negatives=2), 2)
    assert batch["negative_tokens"].shape == (2, 2, 32)
    np.testing.assert_array_equal(batch["negative_tokens"][0], tokens(["n1", "n2"], 32))
    np.testing.assert_array_equal(batch["negative_ids"][0], stable_ids(["a", "b"]))
    np.testing.assert_array_equal(batch["negative_tokens"][1], tokens(["m1", "m2"], 32))
    assert jsonl_pairs.read_pairs(path, num_negatives=0).negative_rows is None
    with pytest.raises(UserError) as error:
        jsonl_pairs.read_pairs(path, num_negatives=3)
    assert str(error.value) == f"{path}:2: wrong number of negatives: 2, but num_negatives is 3"


GOOD = json.dumps({"query": "q", "positive": "p", "negatives": ["n1", "n2"]})


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"query": "q", "positive": "p"', "malformed: not valid JSON (Expecting ',' delimiter)"),
        ('["q", "p"]', "malformed: expected a JSON object"),
        ("", "empty line"),
        ('{"positive": "p", "negatives": ["a", "b"]}', 'malformed: needs a string "query"'),
        ('{"query": "q", "negatives": ["a", "b"]}', 'malformed: needs a string "positive"'),
        ('{"query": 5, "positive": "p", "negatives": ["a", "b"]}', 'malformed: needs a string "query"'),
        ('{"query": " ", "positive": "p", "negatives": ["a", "b"]}', 'empty text: "query" is blank'),
        ('{"query": "q", "positive": "", "negatives": ["a", "b"]}', 'empty text: "positive" is blank'),
        ('{"query": "q", "positive": "p", "negatives": "a"}', 'malformed: "negatives" must be a list of strings'),
        ('{"query": "q", "positive": "p", "negatives": ["a", 2]}', "malformed: negative 2 is not a string"),
        ('{"query": "q", "positive": "p", "negatives": ["a", ""]}', "empty text: negative 2 is blank"),
        ('{"query": "q", "positive": "p", "negatives": ["a"]}', "wrong number of negatives: 1, but line 1 has 2"),
        ('{"query": "q", "positive": "p", "negatives": ["a", "b", "c"]}',
         "wrong number of negatives: 3, but line 1 has 2"),
        ('{"query": "q", "positive": "p"}', "wrong number of negatives: 0, but line 1 has 2"),
        ('{"query": "q", "positive": "p", "negatives": ["a", "b"], "negative_ids": ["x"]}',
         'malformed: "negative_ids" must be a list of 2 ids, one per negative'),
        ('{"query": "q", "positive": "p", "negatives": ["a", "b"], "negative_ids": ["x", null]}',
         'malformed: "negative_ids" must hold strings or integers'),
        ('{"query": "q", "positive": "p", "negatives": ["a", "b"], "query_id": [1]}',
         'malformed: "query_id" must be a string or an integer'),
        ('{"query": "q", "positive": "p", "negatives": ["a", "b"], "positive_id": true}',
         'malformed: "positive_id" must be a string or an integer'),
        ('{"query": "other q", "positive": "p", "negatives": ["a", "b"], "query_id": "q"}',
         "conflicting id: query id q has another text on line 1"),
        ('{"query": "q", "positive": "p2", "negatives": ["a", "b"], "positive_id": "n1"}',
         "conflicting id: passage id n1 has another text on line 1"),
        ('{"query": "q", "positive": "p", "negatives": ["a", "b"], "negative_ids": ["x", "x"]}',
         "conflicting id: passage id x has another text on line 2"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = write(str(tmp_path / "pairs.jsonl"), GOOD + "\n" + line + "\n" + GOOD + "\n")
    with pytest.raises(UserError) as error:
        jsonl_pairs.read_pairs(path)
    assert str(error.value) == f"{path}:2: {message}"


def test_other_mistakes_are_one_line_errors(tmp_path):
    path = write(str(tmp_path / "pairs.jsonl"), GOOD + "\n")
    with pytest.raises(UserError, match=r"^jsonl_pairs_task.name must be"):
        jsonl_pairs_task("no spaces", path)
    with pytest.raises(UserError, match=r"nowhere\.jsonl: no such file"):
        jsonl_pairs.read_pairs(str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(UserError, match=r"empty\.jsonl: no usable pairs"):
        jsonl_pairs.read_pairs(write(str(tmp_path / "empty.jsonl"), ""))
    with pytest.raises(UserError, match=r"num_negatives must be None or an integer >= 0, not -1"):
        jsonl_pairs.read_pairs(path, num_negatives=-1)
    # The task's feature shapes were fixed from the file when it was registered.
    task = jsonl_pairs_task("changing", path)
    write(path, json.dumps({"query": "q", "positive": "p", "negatives": ["only one"]}) + "\n")
    with pytest.raises(UserError, match=r"pairs\.jsonl: changed since task jsonl_changing was registered "
                                        r"\(1 negatives per line, not 2\)"):
        next(pipeline.batch_iterator(task, global_batch_size=1, feature_lengths=LENGTHS))


def test_skip_policy_counts_the_skipped_lines(tmp_path, caplog):
    lines = [
        '{"query": "q0"}',  # rejected, so it does not set the negative count
        json.dumps(LINES[0]),
        "not json",
        json.dumps({**LINES[1], "negatives": ["only one"]}),
        json.dumps(LINES[2]),
        json.dumps({**LINES[1], "query": " "}),
    ]
    path = write(str(tmp_path / "pairs.jsonl"), "\n".join(lines) + "\n")
    gin.parse_config(["bad_lines_policy.bad_lines = 'skip'"])
    SKIPPED.clear()
    pairs = jsonl_pairs.read_pairs(path)
    assert SKIPPED == {(path, "malformed"): 2, (path, "wrong number of negatives"): 1, (path, "empty text"): 1}
    assert f"skipped 4 lines of {path} (1 empty text, 2 malformed, 1 wrong number of negatives)" in caplog.text
    got = pairs.examples(np.arange(len(pairs)))
    assert got["query"] == [LINES[0]["query"], LINES[2]["query"]]
    assert got["negatives"] == [LINES[0]["negatives"], LINES[2]["negatives"]]


def test_gzipped_file_gives_the_same_batches(tmp_path):
    plain = write(str(tmp_path / "pairs.jsonl"), jsonl(LINES))
    zipped = write(str(tmp_path / "pairs.jsonl.gz"), jsonl(LINES))
    with open(zipped, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # really gzipped
    a = list(itertools.islice(pipeline.batch_iterator(jsonl_pairs_task("plain", plain), global_batch_size=2,
                                                      feature_lengths=LENGTHS, seed=5), 3))
    b = list(itertools.islice(pipeline.batch_iterator(jsonl_pairs_task("zipped", zipped), global_batch_size=2,
                                                      feature_lengths=LENGTHS, seed=5), 3))
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and "negative_tokens" in x
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def write_run(tmp_path, data):
    """A gin run: finetune.gin with the tiny model, training on `data` through the factory."""
    return write(str(tmp_path / "run.gin"), "\n".join([
        "include 'runs/finetune.gin'",
        "include 'models/t5_1_1_tiny.gin'",
        "include 'architectures/sde.gin'",
        "MIXTURE_OR_TASK_NAME = @jsonl_pairs_task()",
        "jsonl_pairs_task.name = 'mine'",
        f"jsonl_pairs_task.path = '{data}'",
        f"VOCABULARY = '{DEMO_VOCABULARY}'",
        "TRAIN_STEPS = 3",
        "BATCH_SIZE = 8",
        "TASK_FEATURE_LENGTHS = {'query': 16, 'doc': 24}",
        "LEARNING_RATE = 1e-2",
        "T5Config.vocab_size = 4096",
        "ModelConfig.embed_dim = 32",
        "ModelConfig.query_max_length = 16",
        "ModelConfig.doc_max_length = 24",
        "train.log_every = 1",
        "train.progress = False",
    ]) + "\n")


def test_gtr_jax_train_on_a_gin_run_with_the_factory(tmp_path, capsys):
    topics = ["rivers", "mountains", "cities", "forests", "deserts", "oceans", "islands", "lakes"]
    lines = [{"query": f"tell me about {t} {i}", "positive": f"A passage about {t}, number {i}.",
              "negatives": [f"A passage about {topics[(j + 1) % 8]}.", f"Unrelated text {i}."]}
             for j, t in enumerate(topics) for i in range(2)]
    run = write_run(tmp_path, write(str(tmp_path / "pairs.jsonl.gz"), jsonl(lines)))
    model_dir = tmp_path / "model"
    common = ["train", f"--gin_file={run}", f"--gin.MODEL_DIR={model_dir}"]
    gin.clear_config()
    assert cli.main([*common, "--gin.train.dry_run=True"]) == 0, capsys.readouterr().err
    assert "negative_tokens (8, 2, 24)" in capsys.readouterr().out
    gin.clear_config()
    assert cli.main(common) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in pathlib.Path(model_dir, "metrics.jsonl").read_text().splitlines()]
    losses = {row["step"]: row["loss"] for row in rows if "loss" in row}
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values()), losses
    assert "jsonl_pairs_task.name = 'mine'" in (model_dir / "operative_config.gin").read_text()


def test_a_bad_line_stops_gtr_jax_train_with_one_line(tmp_path, capsys):
    data = write(str(tmp_path / "pairs.jsonl"), GOOD + "\n" + '{"query": "q"}\n')
    gin.clear_config()
    assert cli.main(["train", f"--gin_file={write_run(tmp_path, data)}", f"--gin.MODEL_DIR={tmp_path / 'model'}"]) == 1
    err = capsys.readouterr().err
    assert err == f'gtr-jax train: error: {data}:2: malformed: needs a string "positive"\n', err
