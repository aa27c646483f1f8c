"""`gtr-jax export` end to end: a trained model, exported, must embed as `gtr-jax encode` does.

The references are outside our export code: sentence-transformers itself loading the exported
directory, and `gtr-jax encode` on the checkpoint. The jax artifact is served in a subprocess
in which flax, gin and seqio cannot be imported.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

import hf_models
from gtr_jax.train import checkpoints, trainer
from gtr_jax.cli import main as cli

TESTS = pathlib.Path(__file__).resolve().parent
TEXTS = hf_models.SENTENCES[:8] + ["a long passage about retrieval " * 20, "ünïcödé queries — too", "x"]
LAYOUTS = ("sde", "ade", "ade_spl")
QUERY_LENGTH, DOC_LENGTH, STEPS = 12, 24, 3


def run_cli(*argv):
    assert cli.main([str(a) for a in argv]) == 0


def train_ade_spl(model_dir, spm_path):
    """A few trainer steps of the tiny ADE-SPL model on synthetic pairs, with a real vocabulary."""
    gin.clear_config()
    try:
        cli.parse_gin([str(TESTS / "tiny_train.gin")], [
            f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {STEPS}", "ModelConfig.tower = 'ade_spl'",
            # The vocabulary's 90 pieces must fit in the embedding.
            "T5Config.vocab_size = 128", f"train.vocabulary = '{spm_path}'",
            f"ModelConfig.query_max_length = {QUERY_LENGTH}", f"ModelConfig.doc_max_length = {DOC_LENGTH}",
            "T5Config.scan_layers = True", "train.batch_size = 8", "make_mesh.mesh_shape = (1, 1)", "make_mesh.num_devices = 1",
        ], [str(TESTS)])
        trainer.train()
    finally:
        gin.clear_config()


def write_layout(model_dir, source_dir, tower, params):
    """A model dir of another tower layout built from the trained towers (training each costs ~20 s)."""
    config = dataclasses.replace(checkpoints.load_model_config(str(source_dir)), tower=tower)
    with checkpoints.atomic_directory(str(model_dir)) as staging:
        shutil.copyfile(source_dir / "spiece.model", os.path.join(staging, "spiece.model"))
        checkpoints.write_model_dir(staging, config, params, step=STEPS)


@pytest.fixture(scope="module")
def models(tmp_path_factory, spm_path):
    """{layout: model dir} of a trained ADE-SPL and the SDE and ADE models made from its towers."""
    root = tmp_path_factory.mktemp("export")
    train_ade_spl(root / "ade_spl", spm_path)
    params, _ = checkpoints.restore_params(str(root / "ade_spl"))
    params = jax.tree.map(np.asarray, params)
    query_encoder, doc_encoder, projection = params["query_encoder"], params["doc_encoder"], params["projection"]
    write_layout(root / "sde", root / "ade_spl", "sde", {"encoder": query_encoder, "projection": projection})
    kernel = projection["dense"]["kernel"]
    other = {"dense": {"kernel": np.random.default_rng(0).normal(0, 0.1, kernel.shape).astype(np.float32)}}
    write_layout(root / "ade", root / "ade_spl", "ade", {"query_encoder": query_encoder, "doc_encoder": doc_encoder,
                                                         "query_projection": projection, "doc_projection": other})
    return {layout: root / layout for layout in LAYOUTS}


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "texts.jsonl"
    path.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return path


@pytest.fixture(scope="module")
def encoded(models, texts_file, tmp_path_factory):
    """`gtr-jax encode` output {(layout, tower): [n, embed_dim]} at the model's lengths, and SDE queries at the doc length."""
    out = tmp_path_factory.mktemp("encoded")
    runs = [(layout, tower, []) for layout in LAYOUTS for tower in ("query", "doc")]
    runs.append(("sde", "query", ["--max_length", DOC_LENGTH]))
    results = {}
    for layout, tower, extra in runs:
        output = out / f"{layout}_{tower}_{len(extra)}.npy"
        run_cli("encode", "--model_dir", models[layout], "--tower", tower, "--input", texts_file, "--output", output,
                "--batch_size", 4, "--quiet", *extra)
        results[layout, tower, bool(extra)] = np.load(output)
    return results


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """{(layout, format): export dir} for every layout and both formats."""
    out = tmp_path_factory.mktemp("exported")
    dirs = {}
    for layout in LAYOUTS:
        for fmt in ("sentence-transformers", "jax"):
            dirs[layout, fmt] = out / f"{layout}-{fmt}"
            run_cli("export", "--model_dir", models[layout], "--format", fmt, "--output", dirs[layout, fmt])
    return dirs


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sentence_transformers_export_embeds_like_gtr_jax_encode(exported, encoded, layout, spm_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(exported[layout, "sentence-transformers"]), device="cpu")
    queries = model.encode_query(TEXTS, normalize_embeddings=True, batch_size=4)
    docs = model.encode_document(TEXTS, normalize_embeddings=True, batch_size=4)
    # One SentenceTransformer truncates everything at one length: SDE's doc length.
    np.testing.assert_allclose(queries, encoded[layout, "query", layout == "sde"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(docs, encoded[layout, "doc", False], atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.encode(TEXTS, normalize_embeddings=True), docs, atol=1e-6, rtol=0)
    if layout != "sde":
        assert not np.allclose(queries, docs), "a swapped tower would pass unless the towers differ"

    from gtr_jax.data.vocab import Tokenizer

    theirs = model.tokenize(TEXTS)["input_ids"].numpy()
    ours = Tokenizer(spm_path).encode(TEXTS, DOC_LENGTH)
    assert [row[row != 0].tolist() for row in theirs] == ours
    modules = json.loads((exported[layout, "sentence-transformers"] / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == {
        "sde": ["Transformer", "Pooling", "Dense", "Normalize"], "ade": ["Router", "Normalize"],
        "ade_spl": ["Router", "Dense", "Normalize"]}[layout]


SERVE = """
import importlib.abc, json, sys

BLOCKED = {"flax", "gin", "seqio", "tensorflow", "orbax", "optax"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: gtr_jax.interop.serving must not need it")

sys.meta_path.insert(0, Blocker())
try:
    import flax
except ImportError:
    pass
else:
    sys.exit("the import blocker does not work")

import numpy as np
from gtr_jax.interop import serving

texts, output, *directories = json.load(open(sys.argv[1])), *sys.argv[2:]
results = {}
for directory in directories:
    model = serving.load(directory)
    for tower in ("query", "doc"):
        results[f"{directory}:{tower}"] = model.encode(texts, tower, batch_size=4)
np.savez(output, **results)
print(sorted({m.split(".")[0] for m in sys.modules} & BLOCKED))
"""


def test_jax_export_serves_without_flax_gin_or_seqio_and_embeds_like_gtr_jax_encode(exported, encoded, tmp_path):
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
    directories = [str(exported[layout, "jax"]) for layout in LAYOUTS]
    result = subprocess.run([sys.executable, "-c", SERVE, tmp_path / "texts.json", tmp_path / "out.npz", *directories],
                            capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    served = np.load(tmp_path / "out.npz")
    for layout, directory in zip(LAYOUTS, directories):
        for tower in ("query", "doc"):
            np.testing.assert_allclose(served[f"{directory}:{tower}"], encoded[layout, tower, False], atol=1e-5, rtol=0,
                                       err_msg=f"{layout} {tower}")


def test_jax_export_is_lowered_for_every_platform_with_a_symbolic_batch(exported):
    directory = exported["ade_spl", "jax"]
    config = json.loads((directory / "serving_config.json").read_text())
    assert config["platforms"] == ["cpu", "cuda", "tpu"]
    assert {t: s["max_length"] for t, s in config["towers"].items()} == {"query": QUERY_LENGTH, "doc": DOC_LENGTH}
    function = jax.export.deserialize(bytearray((directory / config["towers"]["doc"]["function"]).read_bytes()))
    assert function.platforms == ("cpu", "cuda", "tpu")
    tokens = function.in_avals[-1]
    assert str(tokens.shape[0]) == "b" and tokens.shape[1] == DOC_LENGTH
    assert sorted(os.listdir(directory)) == ["README.md", "doc.jaxexport", "params.safetensors", "query.jaxexport",
                                             "serving_config.json", "spiece.model"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_import_of_the_sentence_transformers_export_gives_back_the_same_params(models, exported, layout, tmp_path):
    # The trained model stores its layers stacked (scan_layers), which the export unstacks.
    run_cli("import", "--from=sentence-transformers", exported[layout, "sentence-transformers"], "--output", tmp_path / "back",
            "--scan_layers")
    original, _ = checkpoints.restore_params(str(models[layout]))
    back, step = checkpoints.restore_params(str(tmp_path / "back"))
    assert step == 0
    assert jax.tree.structure(back) == jax.tree.structure(original)
    jax.tree.map(np.testing.assert_array_equal, back, original)
    config = checkpoints.load_model_config(str(tmp_path / "back"))
    lengths = (DOC_LENGTH, DOC_LENGTH) if layout == "sde" else (QUERY_LENGTH, DOC_LENGTH)
    assert (config.tower, config.query_max_length, config.doc_max_length) == (layout, *lengths)
    assert (tmp_path / "back" / "spiece.model").read_bytes() == (models[layout] / "spiece.model").read_bytes()


def test_model_card_says_what_was_trained(exported, models):
    card = (exported["ade_spl", "sentence-transformers"] / "README.md").read_text()
    last = json.loads((models["ade_spl"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == STEPS
    for expected in ("ade_spl, step 3", "d_model 64, 2 layers", "ADE-SPL", "projection to 32", "queries 12, documents 24",
                     "encode_query", "Task: @synthetic_pairs", "SamToNe same-tower negatives on the query side", "τ = 0.05",
                     "Steps: 3 of 3, batch size 8", f"| loss (train, step 3) | {last['loss']:.4g} |"):
        assert expected in card, expected
    assert "serving.load" in (exported["ade_spl", "jax"] / "README.md").read_text()


def error_line(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_export_refuses_missing_steps_damaged_checkpoints_and_occupied_outputs(models, tmp_path, capsys):
    export = ("export", "--format=jax", "--output")
    assert "no such model directory" in error_line(capsys, *export, tmp_path / "o", "--model_dir", tmp_path / "none")
    assert "no checkpoint for step 7; available: [3]" in error_line(
        capsys, *export, tmp_path / "o", "--model_dir", models["sde"], "--step=7")

    # An interrupted orbax save leaves only its temporary directory.
    half = tmp_path / "half"
    shutil.copytree(models["sde"], half)
    os.rename(half / "checkpoints" / "checkpoint_3", half / "checkpoints" / "checkpoint_3.orbax-checkpoint-tmp-1234")
    assert "checkpoint 3 is half-written" in error_line(capsys, *export, tmp_path / "o", "--model_dir", half, "--step=3")

    damaged = tmp_path / "damaged"
    shutil.copytree(models["sde"], damaged)
    data = max((p for p in (damaged / "checkpoints" / "checkpoint_3" / "params").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])
    assert "checkpoint 3 is unreadable" in error_line(capsys, *export, tmp_path / "o", "--model_dir", damaged)

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert "--overwrite" in error_line(capsys, "export", "--format=sentence-transformers", "--output", tmp_path / "taken",
                                       "--model_dir", models["sde"])
    assert os.listdir(tmp_path / "taken") == ["keep.txt"]
    assert "--platforms" in error_line(capsys, *export, tmp_path / "o", "--model_dir", models["sde"], "--platforms=rocm")
    assert sorted(os.listdir(tmp_path)) == ["damaged", "half", "taken"], "nothing half-written, no staging left"

    run_cli("export", "--format=sentence-transformers", "--output", tmp_path / "taken", "--model_dir", models["sde"],
            "--overwrite")
    assert "keep.txt" not in os.listdir(tmp_path / "taken") and "modules.json" in os.listdir(tmp_path / "taken")
