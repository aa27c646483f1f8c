"""`gtr-jax import` and `gtr-jax encode` end to end, against sentence-transformers itself."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hf_models
from gtr_jax.train import checkpoints
from gtr_jax.cli import main as cli
from gtr_jax.interop import hf_weights
from gtr_jax.data.vocab import Tokenizer

TEXTS = hf_models.SENTENCES[:8] + ["a long passage about retrieval " * 20, "ünïcödé queries — too"]


@pytest.fixture(scope="module")
def st_model(tmp_path_factory, spm_path):
    """A GTR-style sentence-transformers directory and the texts file to encode."""
    root = tmp_path_factory.mktemp("st")
    directory = hf_models.write_sentence_transformers(str(root / "gtr"), spm_path, embed_dim=24)
    texts_file = root / "texts.jsonl"
    texts_file.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return directory, str(texts_file)


def run_cli(*argv):
    assert cli.main([str(a) for a in argv]) == 0


def reference_embeddings(directory):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(directory, device="cpu")
    return model, model.encode(TEXTS, normalize_embeddings=True, batch_size=4)


@pytest.mark.parametrize("tower", ["sde", "ade_spl"])
def test_import_then_encode_equals_sentence_transformers(st_model, tmp_path, tower):
    directory, texts_file = st_model
    model, expected = reference_embeddings(directory)
    run_cli("import", "--from=sentence-transformers", directory, "--output", tmp_path / "model", "--tower", tower)
    for side in ("query", "doc"):
        output = tmp_path / f"{side}.npy"
        run_cli("encode", "--model_dir", tmp_path / "model", "--tower", side, "--input", texts_file,
                "--output", output, "--batch_size", 4, "--quiet")
        np.testing.assert_allclose(np.load(output), expected, atol=1e-5, rtol=0)

    ours = Tokenizer(str(tmp_path / "model" / "spiece.model")).encode(TEXTS, max_length=32)
    theirs = model.tokenizer(TEXTS, truncation=True, max_length=32)["input_ids"]
    assert ours == theirs
    assert checkpoints.load_model_config(str(tmp_path / "model")).max_length("doc") == 32


def test_import_with_scanned_layers_encodes_the_same(st_model, tmp_path):
    directory, texts_file = st_model
    _, expected = reference_embeddings(directory)
    run_cli("import", "--from=sentence-transformers", directory, "--output", tmp_path / "model", "--scan_layers")
    run_cli("encode", "--model_dir", tmp_path / "model", "--tower=doc", "--input", texts_file, "--output", tmp_path / "e.npy", "--quiet")
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-5, rtol=0)


def test_hf_import_copies_encoder_weights_and_adds_a_projection(tmp_path, spm_path):
    model = hf_models.random_t5(hf_models.t5_config(), seq2seq=True)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    run_cli("import", "--from=hf", tmp_path / "hf", "--output", tmp_path / "model", "--tower=ade",
            "--embed_dim=40", "--vocab", spm_path)
    params, step = checkpoints.restore_params(str(tmp_path / "model"))
    config = checkpoints.load_model_config(str(tmp_path / "model"))
    assert step == 0 and config.tower == "ade" and config.embed_dim == 40
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for path, (name, transposed) in hf_weights.hf_tensor_names(config.encoder).items():
        for tower in ("query_encoder", "doc_encoder"):
            node = params[tower]
            for key in path:
                node = node[key]
            np.testing.assert_array_equal(np.asarray(node), state[name].T if transposed else state[name])
    for projection in ("query_projection", "doc_projection"):
        assert params[projection]["dense"]["kernel"].shape == (64, 40)
    np.testing.assert_array_equal(params["query_projection"]["dense"]["kernel"], params["doc_projection"]["dense"]["kernel"])


def error_line(capsys, *argv):
    """The exit status and stderr of a failing in-process CLI call."""
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_import_errors_are_one_line(tmp_path, capsys):
    assert "no such directory" in error_line(capsys, "import", "--from=hf", tmp_path / "nope", "--output", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    assert "config.json: not found" in error_line(capsys, "import", "--from=hf", tmp_path / "empty", "--output", tmp_path / "o")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "model_type is 'bert'" in error_line(capsys, "import", "--from=hf", tmp_path / "bert", "--output", tmp_path / "o")
    hf_models.t5_config().save_pretrained(tmp_path / "pickled")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    assert "pickle" in error_line(capsys, "import", "--from=hf", tmp_path / "pickled", "--output", tmp_path / "o")
    assert "modules.json: not found" in error_line(
        capsys, "import", "--from=sentence-transformers", tmp_path / "empty", "--output", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_import_refuses_a_non_empty_output_and_leaves_nothing_half_written(st_model, tmp_path, capsys):
    directory, _ = st_model
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert "--overwrite" in error_line(capsys, "import", "--from=sentence-transformers", directory, "--output", tmp_path / "taken")
    assert os.listdir(tmp_path / "taken") == ["keep.txt"]
    # A missing vocabulary fails after the weights are read: no output, no staging leftovers.
    assert "no SentencePiece vocabulary" in error_line(
        capsys, "import", "--from=sentence-transformers", directory, "--output", tmp_path / "new", "--vocab", tmp_path / "x.model")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    run_cli("import", "--from=sentence-transformers", directory, "--output", tmp_path / "taken", "--overwrite")
    assert sorted(os.listdir(tmp_path / "taken")) == ["checkpoints", "model_config.json", "spiece.model"]


@pytest.fixture(scope="module")
def imported(st_model, tmp_path_factory):
    output = tmp_path_factory.mktemp("imported") / "model"
    run_cli("import", "--from=sentence-transformers", st_model[0], "--output", output)
    return output


@pytest.mark.parametrize("content,problem", [
    ('{"_id": "a", "text": "fine"}\n{"_id": "b", "text": \n', "bad.jsonl:2: not valid JSON"),
    ('{"_id": "a", "text": "fine"}\n{"_id": "b", "title": "t"}\n', 'bad.jsonl:2: needs a string field "text"'),
    ('{"_id": "a", "text": "   "}\n', "bad.jsonl:1: empty text"),
])
def test_encode_names_the_bad_line(imported, tmp_path, capsys, content, problem):
    (tmp_path / "bad.jsonl").write_text(content)
    err = error_line(capsys, "encode", "--model_dir", imported, "--tower=query", "--input", tmp_path / "bad.jsonl",
                     "--output", tmp_path / "out.npy")
    assert problem in err
    assert not (tmp_path / "out.npy").exists()


def test_encode_errors_for_missing_model_and_input(imported, tmp_path, capsys):
    (tmp_path / "in.tsv").write_text("1\thello\n")
    assert "no such model directory" in error_line(
        capsys, "encode", "--model_dir", tmp_path / "none", "--tower=doc", "--input", tmp_path / "in.tsv", "--output", tmp_path / "o.npy")
    assert "in2.tsv: no such file" in error_line(
        capsys, "encode", "--model_dir", imported, "--tower=doc", "--input", tmp_path / "in2.tsv", "--output", tmp_path / "o.npy")
    assert "no checkpoint for step 7" in error_line(
        capsys, "encode", "--model_dir", imported, "--step=7", "--tower=doc", "--input", tmp_path / "in.tsv", "--output", tmp_path / "o.npy")


def test_console_entry_point_reports_errors_without_traceback(imported, tmp_path):
    (tmp_path / "bad.tsv").write_text("1\tgood\n2\tbad\textra\n")
    result = subprocess.run(
        [sys.executable, "-m", "gtr_jax", "encode", "--model_dir", str(imported), "--tower=query",
         "--input", str(tmp_path / "bad.tsv"), "--output", str(tmp_path / "o.npy")],
        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith("bad.tsv:2: expected 2 tab-separated fields (id, text), found 3")
    assert "Traceback" not in result.stderr
