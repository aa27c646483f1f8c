"""seqio's TensorFlow tokenization and the numpy pipeline give vocab.Tokenizer's ids."""

import numpy as np
import pytest
import tensorflow as tf

from data_files import PASSAGES, tokens
from gtr_jax.data.sources import demo
from gtr_jax.data.features import TokenizerVocabulary, numpy_features, output_features, tokenize
from gtr_jax.data.vocab import EOS_ID, Tokenizer

TEXTS = [text for _, query, passage, _ in demo.all_pairs()[:200] for text in (query, passage)] + list(PASSAGES.values())


def seqio_tokens(texts, length):
    vocabulary = TokenizerVocabulary(demo.DEMO_VOCABULARY)
    features = {"doc": output_features(vocabulary, False)["doc"]}
    ds = tokenize(tf.data.Dataset.from_tensor_slices({"doc": texts}), features, {"doc": length})
    return [list(ex["doc"]) for ex in ds.as_numpy_iterator()]


@pytest.mark.parametrize("length", [8, 512])
def test_tensorflow_ids_equal_the_encoder_tokenizer(length):
    expected = Tokenizer(demo.DEMO_VOCABULARY).encode(TEXTS, length)
    assert seqio_tokens(TEXTS, length) == expected
    assert all(ids[-1] == EOS_ID and len(ids) <= length for ids in expected)


def test_vocabulary_python_side_and_gin_default():
    vocabulary = TokenizerVocabulary(demo.DEMO_VOCABULARY)
    assert vocabulary.encode(TEXTS[0]) == Tokenizer(demo.DEMO_VOCABULARY).pieces([TEXTS[0]])[0]
    assert vocabulary.decode(vocabulary.encode("capital of France")) == "capital of France"
    ids = tf.constant([vocabulary.encode("capital of France") + [1, 0]])
    assert vocabulary.decode_tf(ids).numpy().tolist() == [b"capital of France"]
    assert vocabulary.vocab_size == 4000 and vocabulary.eos_id == 1
    assert TokenizerVocabulary().path.startswith("gs://t5-data/vocabs/cc_all.32000")


def test_numpy_features_shapes_and_padding():
    examples = {
        "query": ["capital of france"], "query_id": ["q"], "doc": [PASSAGES[0]], "doc_id": ["d"],
        "negatives": [[PASSAGES[2], PASSAGES[3]]], "negative_ids": [["n2", "n3"]],
    }
    out = numpy_features(examples, Tokenizer(demo.DEMO_VOCABULARY), {"query": 6, "doc": 40})
    np.testing.assert_array_equal(out["query_tokens"], tokens(["capital of france"], 6))
    assert out["negative_tokens"].shape == (1, 2, 40) and out["negative_ids"].shape == (1, 2)
    np.testing.assert_array_equal(out["negative_tokens"][0], tokens([PASSAGES[2], PASSAGES[3]], 40))
