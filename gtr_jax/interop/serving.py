"""Strings to embeddings with a `gtr-jax export --format=jax` directory: jax, numpy and sentencepiece only.

    from gtr_jax.interop import serving
    model = serving.load("exported/")
    queries = model.encode(["what is the capital of france"], tower="query")   # float32 [1, embed_dim]
    docs = model.encode(["Paris is the capital of France."], tower="doc")
    scores = queries @ docs.T                                                  # cosine similarities

This module must not import flax, gin, seqio, TensorFlow, nor any gtr_jax module that
does: a server that loads the artifact needs jax, numpy, sentencepiece and safetensors
(so it reads a local directory with plain `open`, not etils.epath, which probes TensorFlow).

The directory holds:
  serving_config.json    format version, tower layout, embed_dim, per tower: function file, max length
  query.jaxexport        serialized `jax.export` functions (params, int32 tokens [b, max_length])
  doc.jaxexport            -> float32 unit embeddings [b, embed_dim]; b is symbolic
  params.safetensors     the model's parameters, named by their path in the tree ("a/b/c")
  spiece.model           the SentencePiece vocabulary
"""

import json
import os

import jax
import numpy as np
import safetensors.numpy
import sentencepiece

CONFIG_FILE = "serving_config.json"
PARAMS_FILE = "params.safetensors"
VOCABULARY_FILE = "spiece.model"
FORMAT_VERSION = 1
TOWERS = ("query", "doc")
# T5's conventions, also what gtr_jax.data.vocab checks a vocabulary against.
PAD_ID, EOS_ID = 0, 1


def flatten_params(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{"a/b/c": array} of a nested dict of arrays; `unflatten_params` inverts it."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}/"))
        else:
            flat[name] = np.ascontiguousarray(np.asarray(value))
    return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    """The nested dict of `flatten_params`' output."""
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def tokenize(processor: sentencepiece.SentencePieceProcessor, texts: list[str], length: int) -> np.ndarray:
    """int32 [len(texts), length]: SentencePiece ids truncated to length - 1, EOS, then padding.

    The same ids as `gtr_jax.data.vocab.Tokenizer.encode`, which training and `gtr-jax encode` use;
    that module imports gin, so the few lines are repeated here.
    """
    tokens = np.full((len(texts), length), PAD_ID, np.int32)
    for row, ids in enumerate(processor.encode(list(texts))):
        ids = ids[: length - 1] + [EOS_ID]
        tokens[row, : len(ids)] = ids
    return tokens


def _bucket_rows(count: int, batch_size: int) -> int:
    """Rows to pad a batch of `count` texts to: a power of two up to batch_size, so that
    the symbolic batch dimension is compiled for a handful of sizes, not one per call."""
    rows = 1
    while rows < count:
        rows *= 2
    return min(rows, batch_size)


class ServingModel:
    """An exported dual encoder: its tokenizer, parameters and per-tower jax.export functions."""

    def __init__(self, directory: str):
        path = os.path.join(directory, CONFIG_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: not found; is {directory} a `gtr-jax export --format=jax` directory?")
        with open(path, encoding="utf-8") as f:
            self.config = json.load(f)
        if self.config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {self.config.get('format_version')}; "
                             f"this loader reads {FORMAT_VERSION}")
        self.embed_dim = int(self.config["embed_dim"])
        self.max_lengths = {tower: int(spec["max_length"]) for tower, spec in self.config["towers"].items()}
        self._processor = sentencepiece.SentencePieceProcessor(model_file=os.path.join(directory, VOCABULARY_FILE))
        params = safetensors.numpy.load_file(os.path.join(directory, PARAMS_FILE))
        self.params = jax.device_put(unflatten_params(params))
        self._functions = {}
        for tower, spec in self.config["towers"].items():
            with open(os.path.join(directory, spec["function"]), "rb") as f:
                exported = jax.export.deserialize(bytearray(f.read()))
            self._functions[tower] = jax.jit(exported.call)

    def tokenize(self, texts: list[str], tower: str) -> np.ndarray:
        """int32 [len(texts), max_length] token ids of `texts` for the query or doc tower."""
        return tokenize(self._processor, texts, self.max_lengths[tower])

    def encode(self, texts: list[str], tower: str = "query", batch_size: int = 32) -> np.ndarray:
        """float32 [len(texts), embed_dim] unit embeddings of `texts` with the query or doc tower."""
        if tower not in self._functions:
            raise ValueError(f"tower must be one of {sorted(self._functions)}, not {tower!r}")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        tokens = self.tokenize(texts, tower)
        pending = []
        for start in range(0, len(texts), batch_size):
            batch = tokens[start : start + batch_size]
            padded = np.zeros((_bucket_rows(len(batch), batch_size), batch.shape[1]), np.int32)
            padded[: len(batch)] = batch
            # Dispatch every batch before reading any result back, so the host does not stall the device.
            pending.append((len(batch), self._functions[tower](self.params, padded)))
        embeddings = [np.asarray(result)[:rows] for rows, result in pending]
        return np.concatenate(embeddings) if embeddings else np.zeros((0, self.embed_dim), np.float32)


def load(directory: str) -> ServingModel:
    """The exported model in `directory`, ready to `encode`."""
    return ServingModel(directory)
