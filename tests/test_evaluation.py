"""End to end: train the tiny model on a BEIR-format set with evaluation during training, then
`gtr-jax evaluate`, then `gtr-jax metrics` and pytrec_eval on the run file it wrote."""

import json
import os
import pathlib

import gin
import numpy as np
import pytest
import pytrec_eval

import tasks  # noqa: F401  (registers beir_scifact, read from BEIR_DIR/scifact)
from gtr_jax.data.sources import beir
from gtr_jax.cli import main as cli
from gtr_jax.eval import encoding, evaluation, metrics, retrieval
from gtr_jax.train import trainer
from gtr_jax.data.sources.demo import DEMO_VOCABULARY
from retrieval_case import DUPLICATE_IDS, random_model_dir, tiny_config, write_demo_beir

TESTS = pathlib.Path(__file__).resolve().parent
TOP_K = 20
TRAIN_BINDINGS = [
    "TRAIN_STEPS = 4",
    "EVAL_TASKS = 'beir_scifact'",
    "EVAL_EVERY = 2",
    "RetrievalEvaluation.max_queries = 50",
    "RetrievalEvaluation.measures = ('ndcg_cut_10', 'recip_rank')",
    "train.input_fn = @batch_iterator",
    "batch_iterator.task_or_mixture_name = 'beir_scifact'",
    "batch_iterator.feature_lengths = {'query': 32, 'doc': 64}",
    f"train.vocabulary = '{DEMO_VOCABULARY}'",
    f"Tokenizer.path = '{DEMO_VOCABULARY}'",
    "T5Config.vocab_size = 4096",
    "ModelConfig.query_max_length = 32",
    "ModelConfig.doc_max_length = 64",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(BEIR root, model dir) after 4 steps on beir_scifact, evaluated in training at steps 2 and 4."""
    root = tmp_path_factory.mktemp("beir")
    write_demo_beir(str(root / "scifact"))
    model_dir = tmp_path_factory.mktemp("model")
    # Starting from a checkpoint skips compiling the model's random init (~10 s here).
    init = random_model_dir(str(tmp_path_factory.mktemp("init")), seed=0, config=tiny_config("sde"))
    gin.clear_config()
    try:
        cli.parse_gin([str(TESTS / "tiny_train.gin"), "eval/in_training.gin"],
                      [f"MODEL_DIR = '{model_dir}'", f"beir_dir.directory = '{root}'",
                       f"train.init_checkpoint = '{init}'", *TRAIN_BINDINGS], [str(TESTS)])
        trainer.train()
    finally:
        gin.clear_config()
    return root, model_dir


def test_training_logs_corpus_metrics_and_writes_runs(trained):
    _, model_dir = trained
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = {row["step"]: row for row in rows if "eval/beir_scifact/ndcg_cut_10" in row}
    assert sorted(evaluated) == [2, 4]
    for step in (2, 4):
        summary = json.loads((model_dir / "eval" / f"step_{step}" / "metrics.json").read_text())
        assert summary["results"]["beir_scifact"]["num_q"] == 50
        assert summary["results"]["beir_scifact"]["ndcg_cut_10"] == evaluated[step]["eval/beir_scifact/ndcg_cut_10"]
        run = metrics.read_run(str(model_dir / "eval" / f"step_{step}" / "beir_scifact.run"))
        assert len(set(run.query_ids)) == 50 and len(run.query_ids) == 50 * 100


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """`gtr-jax evaluate` of the trained model: the output directory."""
    root, model_dir = trained
    output = tmp_path_factory.mktemp("eval")
    gin.clear_config()
    try:
        assert cli.main(["evaluate", "--gin_file=eval/retrieval.gin", f"--gin.MODEL_DIR={model_dir}",
                         "--gin.MIXTURE_OR_TASK_NAME=beir_scifact", f"--gin.EVAL_OUTPUT_DIR={output}",
                         f"--gin.BEIR_DIR={root}", f"--gin.EVAL_TOP_K={TOP_K}", "--gin.evaluate.progress=False"]) == 0
    finally:
        gin.clear_config()
    return output


def test_metrics_command_scores_the_run_file_identically(trained, evaluated, capsys):
    root, _ = trained
    summary = json.loads((evaluated / "metrics.json").read_text())
    assert summary["step"] == 4 and summary["top_k"] == TOP_K
    expected = summary["results"]["beir_scifact"]
    qrels_file, run_file = root / "scifact" / "qrels" / "test.tsv", evaluated / "beir_scifact.run"
    capsys.readouterr()
    assert cli.main(["metrics", f"--qrels={qrels_file}", f"--run={run_file}"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    assert expected["num_q"] == 120 and 0 < expected["ndcg_cut_10"] <= 1

    # And trec_eval itself agrees on the file.
    qrels = metrics.read_qrels(str(qrels_file))
    run = metrics.read_run(str(run_file))
    run_dict = {}
    for q, d, s in zip(run.query_ids, run.doc_ids, run.scores):
        run_dict.setdefault(q, {})[d] = s
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank", "recall.10"}).evaluate(run_dict)
    for measure in ("ndcg_cut_10", "recip_rank", "recall_10"):
        assert expected[measure] == pytest.approx(np.mean([v[measure] for v in per_query.values()]), abs=1e-9)
    assert (evaluated / "tensorboard").is_dir() and os.listdir(evaluated / "tensorboard")


def test_run_is_the_brute_force_ranking_of_single_device_embeddings(trained, evaluated):
    root, model_dir = trained
    eval_set = beir.eval_set(str(root / "scifact"))
    encoder = encoding.load_text_encoder(str(model_dir))
    queries = encoder.embed(eval_set.query_texts, "query", 32, progress=False)
    corpus = encoder.embed(eval_set.doc_texts, "doc", 64, progress=False)
    scores = queries.astype(np.float64) @ corpus.T.astype(np.float64)
    run = metrics.read_run(str(evaluated / "beir_scifact.run"))
    doc_row = {d: i for i, d in enumerate(eval_set.doc_ids)}
    for qi, qid in enumerate(eval_set.query_ids):
        mine = run.query_ids == qid
        ranked = [doc_row[d] for d in run.doc_ids[mine]]
        assert len(ranked) == TOP_K
        np.testing.assert_allclose(run.scores[mine], scores[qi, ranked], atol=1e-5)
        # Best first, and nothing left out scores higher than the last one kept (up to float noise).
        assert np.all(np.diff(scores[qi, ranked]) <= 1e-5)
        left_out = np.setdiff1d(np.arange(len(corpus)), ranked)
        assert scores[qi, left_out].max() <= scores[qi, ranked[-1]] + 1e-5
        # The duplicated passage's two copies tie exactly and rank by id, descending, as trec_eval does.
        if all(d in run.doc_ids[mine] for d in DUPLICATE_IDS):
            positions = [list(run.doc_ids[mine]).index(d) for d in DUPLICATE_IDS]
            assert positions[1] + 1 == positions[0]


def test_evaluate_with_disk_shards_writes_the_same_run(trained, evaluated, tmp_path):
    root, model_dir = trained
    gin.clear_config()
    try:
        assert cli.main(["evaluate", "--gin_file=eval/retrieval.gin", f"--gin.MODEL_DIR={model_dir}",
                         "--gin.MIXTURE_OR_TASK_NAME=beir_scifact", f"--gin.EVAL_OUTPUT_DIR={tmp_path / 'out'}",
                         f"--gin.BEIR_DIR={root}", f"--gin.EVAL_TOP_K={TOP_K}", "--gin.evaluate.progress=False",
                         f"--gin.evaluate.embeddings_dir='{tmp_path / 'embeddings'}'", "--gin.evaluate.shard_size=50",
                         "--gin.make_mesh.mesh_shape=(4, 2)"]) == 0
    finally:
        gin.clear_config()
    assert len(os.listdir(tmp_path / "embeddings" / "beir_scifact")) == 1 + 4  # manifest + 162 rows in 4 shards
    mine = metrics.read_run(str(tmp_path / "out" / "beir_scifact.run"))
    reference = metrics.read_run(str(evaluated / "beir_scifact.run"))
    np.testing.assert_array_equal(mine.query_ids, reference.query_ids)
    np.testing.assert_allclose(mine.scores, reference.scores, atol=1e-6)
    # Ranks may swap only between scores closer than float noise.
    swapped = mine.doc_ids != reference.doc_ids
    assert np.all(np.abs(mine.scores - reference.scores)[swapped] < 1e-6)


def test_ignoring_identical_ids_keeps_k_other_documents():
    ids = np.asarray(["a", "b", "c", "d"])
    order = retrieval.trec_order(ids)
    assert ids[order].tolist() == ["d", "c", "b", "a"]
    corpus = np.eye(4, dtype=np.float32)[order]
    queries = np.eye(4, dtype=np.float32)[[0, 1]]
    ranking = evaluation.rank(["a", "x"], queries, ids[order], corpus, 2, ignore_identical_ids=True)
    assert ranking.doc_ids[0].tolist() == ["d", "c"]  # "a" itself dropped; the 0-score ties by id, descending
    assert ranking.doc_ids[1].tolist() == ["b", "d"]
    whole = evaluation.rank(["a"], queries[:1], ids[order], corpus, 4, ignore_identical_ids=True)
    assert whole.doc_ids[0].tolist() == ["d", "c", "b", ""] and len(whole.run().doc_ids) == 3


def test_missing_required_setting_is_one_line(capsys):
    gin.clear_config()
    try:
        assert cli.main(["evaluate", "--gin_file=eval/retrieval.gin", "--gin.MODEL_DIR=/nowhere"]) == 1
    finally:
        gin.clear_config()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_beir_gin_names_registered_tasks():
    from gtr_jax.data import pipeline as data

    gin.clear_config()
    try:
        cli.parse_gin(["eval/beir.gin"], ["MODEL_DIR = '/m'", "EVAL_OUTPUT_DIR = '/o'", "BEIR_DIR = '/b'"], [])
        names = evaluation._task_names(gin.query_parameter("%MIXTURE_OR_TASK_NAME"))
        assert gin.query_parameter("%EVAL_TOP_K") == 1000
    finally:
        gin.clear_config()
    assert len(names) == 13 and "beir_msmarco" not in names
    assert set(names) <= set(data.SOURCES)
