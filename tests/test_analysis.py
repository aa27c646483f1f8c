"""`gtr-jax analyze`: two checkpoints side by side, PNGs read back, panels and report checked."""

import json

import gin
import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from gtr_jax.eval import analysis
from gtr_jax.cli import main as cli
from gtr_jax.data.examples import EvalSet
from retrieval_case import random_model_dir, tiny_config, write_demo_beir


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("beir")
    write_demo_beir(str(root / "scifact"), num_queries=60, num_distractors=20)
    models = [random_model_dir(str(tmp_path_factory.mktemp(f"model{seed}")), seed=seed) for seed in (0, 1)]
    output = tmp_path_factory.mktemp("analysis")
    gin.clear_config()
    try:
        assert cli.main(["analyze", f"--model_dir={models[0]}", f"--model_dir={models[1]}", "--label=in-batch",
                         "--label=samtone", "--task=beir_scifact", f"--output={output}", "--tsne_points=40",
                         "--gin_file=data.gin", f"--gin.BEIR_DIR={root}", "--quiet"]) == 0
    finally:
        gin.clear_config()
    return output


@pytest.mark.parametrize("figure, title", [("top1_cosine", "cos(query, top-1)"),
                                           ("pair_similarity", "random pairs"), ("tsne", "t-SNE")])
def test_each_figure_has_one_panel_per_checkpoint(analyzed, figure, title):
    path = analyzed / f"{figure}.png"
    pixels = matplotlib.image.imread(path)
    height, width, channels = pixels.shape
    assert channels == 4 and width == 1000 and height in (400, 500)
    assert pixels[..., :3].std() > 0.05, "the image should not be blank"
    panels = json.loads(Image.open(path).text["Panels"])
    assert len(panels) == 2
    assert panels[0].startswith("in-batch: ") and panels[1].startswith("samtone: ")
    assert all(title in p for p in panels)


def test_report_lists_both_checkpoints_and_the_figures(analyzed):
    report = (analyzed / "report.md").read_text()
    assert "| in-batch |" in report and "| samtone |" in report
    for figure in analysis.FIGURES:
        assert f"({figure}.png)" in report


class FixedEncoder:
    """Stands in for a TextEncoder: the given embeddings for each tower."""

    model_config = tiny_config()

    def __init__(self, queries, docs):
        self.embeddings = {"query": queries, "doc": docs}

    def embed(self, texts, tower, max_length, batch_size, progress):
        assert len(texts) == len(self.embeddings[tower])
        return self.embeddings[tower]


def unit_rows(rng, n, dim=8):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_diagnostics_are_cosines_of_the_right_pairs():
    rng = np.random.default_rng(0)
    queries, docs = unit_rows(rng, 6), unit_rows(rng, 9)
    qrels = {f"q{i}": {f"d{i}": 1, f"d{i + 3}": 2} for i in range(5)}  # q5 has no judgment
    eval_set = EvalSet([f"q{i}" for i in range(6)], ["?"] * 6, [f"d{i}" for i in range(9)], ["?"] * 9, qrels)
    query_rows, doc_rows = analysis.relevant_passages(eval_set)
    assert query_rows.tolist() == [0, 1, 2, 3, 4] and doc_rows.tolist() == [3, 4, 5, 6, 7]  # the most relevant
    result = analysis.diagnostics(FixedEncoder(queries, docs), eval_set, num_pairs=200, tsne_rows=np.arange(5), seed=0)
    np.testing.assert_allclose(result["top1"], (queries @ docs.T).max(axis=1), atol=1e-6)
    np.testing.assert_allclose(result["relevant"], np.sum(queries[:5] * docs[[3, 4, 5, 6, 7]], axis=1), atol=1e-6)
    q, p = queries[:5], docs[[3, 4, 5, 6, 7]]
    off_diagonal = ~np.eye(5, dtype=bool)
    assert np.isin(np.round(result["query_query"], 5), np.round((q @ q.T)[off_diagonal], 5)).all()
    assert np.isin(np.round(result["query_passage"], 5), np.round((q @ p.T)[off_diagonal], 5)).all()
    assert result["tsne"].shape == (10, 2) and result["tsne_queries"] == 5
