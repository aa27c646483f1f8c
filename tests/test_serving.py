"""`gtr_jax.interop.serving` pieces that need no exported model; serving itself is tested end to end in test_export.py."""

import subprocess
import sys

import numpy as np
import pytest
import sentencepiece

import hf_models
from gtr_jax.interop import serving
from gtr_jax.data.vocab import Tokenizer, pad_batch

ODD_TEXTS = ["", " ", "x", "  double  spaces\tand\ttabs\n", "ﬁ ligature Ⅻ full－width", "ünïcödé — too",
             "a long passage about retrieval " * 20, "</s> <pad> <unk> look like control pieces"]


@pytest.mark.parametrize("length", [1, 2, 12, 64])
def test_tokenize_gives_the_ids_training_and_encode_use(spm_path, length):
    processor = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    texts = hf_models.SENTENCES[:8] + ODD_TEXTS
    expected = pad_batch(Tokenizer(spm_path).encode(texts, length), length)
    np.testing.assert_array_equal(serving.tokenize(processor, texts, length), expected)


def test_params_flatten_to_path_names_and_back():
    tree = {"query_encoder": {"layers_0": {"mlp": {"wo": {"kernel": np.ones((2, 3), np.float32)}}},
                              "relpos_bias": np.zeros((4, 2), np.float32)},
            "projection": {"dense": {"kernel": np.eye(3, dtype=np.float32)}}}
    flat = serving.flatten_params(tree)
    assert sorted(flat) == ["projection/dense/kernel", "query_encoder/layers_0/mlp/wo/kernel", "query_encoder/relpos_bias"]
    back = serving.unflatten_params(flat)
    assert back.keys() == tree.keys() and back["query_encoder"].keys() == tree["query_encoder"].keys()
    np.testing.assert_array_equal(back["projection"]["dense"]["kernel"], np.eye(3))


def test_batches_are_padded_to_few_sizes():
    assert [serving._bucket_rows(n, 32) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
    assert serving._bucket_rows(20, 24) == 24


def test_a_directory_that_is_not_an_export_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="serving_config.json: not found.*gtr-jax export --format=jax"):
        serving.load(str(tmp_path))
    (tmp_path / "serving_config.json").write_text('{"format_version": 99}')
    with pytest.raises(ValueError, match="format_version 99; this loader reads 1"):
        serving.load(str(tmp_path))


def test_importing_serving_pulls_in_no_training_stack():
    code = ("import sys, gtr_jax.interop.serving; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'flax', 'gin', 'seqio', 'tensorflow', 'orbax', 'optax'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
