"""Texts to dual-encoder features, the same way in seqio (TensorFlow) and in numpy.

Task features: `query`, `doc` (text -> int32 [length]) and, for tasks with hard
negatives, `negatives` (int32 [num_negatives, doc length]); `query_id`, `doc_id` and
`negative_ids` are int32 31-bit hashes of the source's ids (examples.stable_ids), used
to mask duplicates in the loss. Every token sequence is SentencePiece ids truncated to
length - 1 and then EOS (1), padded with 0, never packed: exactly vocab.Tokenizer.encode,
so training and encoding agree.

Model features (after `DualEncoderFeatureConverter`, and what `data.batch_iterator`
yields): query_tokens [Lq], doc_tokens [Ld], negative_tokens [K, Ld], query_ids,
doc_ids, negative_ids [K].
"""

import numpy as np
import seqio
import tensorflow as tf

from gtr_jax.data import vocab
from gtr_jax.data.examples import stable_ids


def keep_tensorflow_off_accelerators():
    """Hide every GPU from TensorFlow, which only feeds data here: JAX owns the accelerators (as in t5x)."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow's devices were set up already, by an earlier user in this process
        pass


keep_tensorflow_off_accelerators()

DEFAULT_FEATURE_LENGTHS = {"query": 64, "doc": 256}
MODEL_NAMES = {
    "query": "query_tokens",
    "doc": "doc_tokens",
    "negatives": "negative_tokens",
    "query_id": "query_ids",
    "doc_id": "doc_ids",
    "negative_ids": "negative_ids",
}


class TokenizerVocabulary(seqio.Vocabulary):
    """A seqio Vocabulary over vocab.Tokenizer: the same SentencePiece ids in Python and TF.

    With no path, the model is gin's `Tokenizer.path` (T5's by default), looked up each
    time it is used, so a task registered at import follows the gin config of the run.
    """

    def __init__(self, path: str | None = None):
        super().__init__(extra_ids=0)
        self._path = path

    @property
    def path(self) -> str:
        """The SentencePiece model file in use."""
        return self._path or vocab.configured_path()

    @property
    def tokenizer(self) -> vocab.Tokenizer:
        """The vocab.Tokenizer of `path` (loaded once per process)."""
        return vocab.shared_tokenizer(self.path)

    @property
    def eos_id(self) -> int:
        """T5's end-of-sequence id, 1."""
        return vocab.EOS_ID

    @property
    def unk_id(self) -> int:
        """The SentencePiece model's unknown-piece id."""
        return self.tokenizer.unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _encode(self, s: str) -> list[int]:
        return self.tokenizer.pieces([s])[0]

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        # Python SentencePiece inside the graph, not tensorflow_text: its bundled copy breaks
        # ties between equal-score segmentations ("]]]") differently from the encoder's.
        def encode(texts):  # a scalar string arrives as bytes, a vector as an array
            ids = self.tokenizer.pieces([t.decode("utf-8") for t in np.asarray(texts, object).reshape(-1)])
            return np.array([i for row in ids for i in row], np.int32), np.array([len(row) for row in ids], np.int64)

        values, lengths = tf.numpy_function(encode, [s], (tf.int32, tf.int64), stateful=False)
        values.set_shape([None])
        if s.shape.rank == 0:
            return values
        return tf.RaggedTensor.from_row_lengths(values, tf.reshape(lengths, [-1]))

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def decode(rows: np.ndarray):
            rows = rows.reshape(-1, rows.shape[-1]) if rows.ndim else rows.reshape(1, -1)
            return np.array([self.tokenizer.decode(row).encode() for row in rows], object)

        texts = tf.numpy_function(decode, [ids], tf.string, stateful=False)
        return tf.reshape(texts, tf.shape(ids)[:-1])

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenizerVocabulary) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)


def output_features(vocabulary: seqio.Vocabulary, with_negatives: bool) -> dict[str, seqio.Feature]:
    """seqio output features of a dual-encoder task."""
    features = {
        "query": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32),
        "doc": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32),
    }
    if with_negatives:
        features["negatives"] = seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32, rank=2)
    return features


def _length(name: str, sequence_length) -> int | None:
    key = "doc" if name == "negatives" else name
    return None if not sequence_length else sequence_length.get(key)


def tokenize(dataset: tf.data.Dataset, output_features, sequence_length=None) -> tf.data.Dataset:
    """seqio preprocessor: text features to ids, truncated to length - 1, then EOS.

    Negatives come out dense [num_negatives, doc length] (padded with 0), since seqio
    pads only the first axis; without a sequence_length nothing is truncated.
    """

    def tokenize_example(example):
        out = dict(example)
        for name, feature in output_features.items():
            ids = feature.vocabulary.encode_tf(example[name])
            length = _length(name, sequence_length)
            eos = feature.vocabulary.eos_id
            if feature.rank == 1:
                ids = ids[: length - 1] if length else ids
                out[name] = tf.concat([ids, [eos]], axis=0)
            else:
                ids = ids[:, : length - 1] if length else ids
                eos_column = tf.fill([ids.nrows(), 1], tf.constant(eos, tf.int32))
                ids = tf.concat([ids, tf.RaggedTensor.from_tensor(eos_column)], axis=1)
                out[name] = ids.to_tensor(shape=[None, length]) if length else ids.to_tensor()
        return out

    return dataset.map(tokenize_example, num_parallel_calls=tf.data.AUTOTUNE)


class DualEncoderFeatureConverter(seqio.FeatureConverter):
    """Task features -> model features: pads tokens to their lengths and renames (no packing).

    Give it the query and doc lengths only, e.g. {"query": 64, "doc": 256}: negatives
    take the doc length, and ids have none.
    """

    TASK_FEATURES = {
        "query": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "doc": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "query_id": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=0),
        "doc_id": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=0),
    }
    NEGATIVE_FEATURES = {
        "negatives": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
        "negative_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=1),
    }
    PACKING_FEATURE_DTYPES = None

    def __init__(self, with_negatives: bool = False, pack: bool = False, **kwargs):
        if pack:
            raise ValueError("dual-encoder examples are never packed")
        # Instance attributes: the feature sets depend on whether the task has negatives.
        self.TASK_FEATURES = {**self.TASK_FEATURES, **(self.NEGATIVE_FEATURES if with_negatives else {})}
        self.MODEL_FEATURES = {MODEL_NAMES[k]: v for k, v in self.TASK_FEATURES.items()}
        self._num_negatives = None
        super().__init__(pack=False, **kwargs)

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths) -> tf.data.Dataset:
        """seqio's conversion, after filling in the lengths of negatives and ids."""
        lengths = {"query": task_feature_lengths["query"], "doc": task_feature_lengths["doc"], "query_id": 0, "doc_id": 0}
        if "negatives" in self.TASK_FEATURES:
            self._num_negatives = ds.element_spec["negative_ids"].shape[0]
            lengths.update(negatives=lengths["doc"], negative_ids=self._num_negatives)
        return super().__call__(ds, lengths)

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths) -> tf.data.Dataset:
        ds = seqio.utils.trim_and_pad_dataset(ds, {k: task_feature_lengths[k] for k in ("query", "doc")})
        return ds.map(lambda ex: {MODEL_NAMES[k]: ex[k] for k in self.TASK_FEATURES}, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths):
        """Model feature lengths: the token lengths and the number of negatives."""
        return {MODEL_NAMES[k]: v for k, v in task_feature_lengths.items()}


def numpy_features(examples: dict[str, list], tokenizer: vocab.Tokenizer, lengths) -> dict[str, np.ndarray]:
    """Model features of raw examples (examples.Pairs.examples), tokenized with numpy/SentencePiece."""
    lq, ld = lengths["query"], lengths["doc"]
    out = {
        "query_tokens": vocab.pad_batch(tokenizer.encode(examples["query"], lq), lq),
        "doc_tokens": vocab.pad_batch(tokenizer.encode(examples["doc"], ld), ld),
        "query_ids": stable_ids(examples["query_id"]),
        "doc_ids": stable_ids(examples["doc_id"]),
    }
    if "negatives" in examples:
        rows, k = len(examples["negatives"]), len(examples["negatives"][0]) if examples["negatives"] else 0
        flat = [text for group in examples["negatives"] for text in group]
        out["negative_tokens"] = vocab.pad_batch(tokenizer.encode(flat, ld), ld).reshape(rows, k, ld)
        out["negative_ids"] = stable_ids([i for group in examples["negative_ids"] for i in group]).reshape(rows, k)
    return out
