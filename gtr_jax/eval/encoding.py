"""Batched embedding of texts with one tower of a trained or imported model.

Texts are sorted by token length so that each batch pads little, and each batch is
padded to a length from a short list of buckets (see bucket_length) so that XLA
compiles a handful of programs, not one per batch. Batches are dispatched without waiting for results, and
results come back to the host once, at the end (of the whole call, or of each shard).

With a mesh, each batch is split over the mesh axis `data` (params as the caller placed
them, e.g. sharded by the logical-axis rules) and the embeddings come back replicated,
which also works when the mesh spans several processes. Corpora bigger than memory are
embedded shard by shard to .npy files (`embed_to_shards`) that search reads memory-mapped.
"""

import contextlib
import json
import math
import os
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
import tqdm
from etils import epath
from jax.experimental import multihost_utils

from gtr_jax.train import checkpoints, partitioning
from gtr_jax.model import dual_encoder
from gtr_jax.errors import UserError
from gtr_jax.data.examples import take
from gtr_jax.data.vocab import Tokenizer, model_dir_vocabulary, pad_batch

MIN_BUCKET = 16
SHARD_FILE = "embeddings-{:05d}.npy"
MANIFEST = "manifest.json"


def bucket_length(length: int, max_length: int) -> int:
    """Smallest of 16, 24, 32, 48, 64, 96, ... (2^n and 1.5 * 2^n) ≥ length, capped at max_length.

    Twice as many shapes as powers of two, for at most a third of padding instead of half.
    """
    bucket = MIN_BUCKET
    while bucket < length:
        bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3
    return min(bucket, max_length)


def param_shardings(model_config: dual_encoder.ModelConfig, mesh: jax.sharding.Mesh):
    """Where encoding places a model's params on `mesh`: by the logical-axis rules, as in training."""
    boxed = checkpoints.boxed_param_shapes(model_config)
    return partitioning.param_shardings(boxed, mesh, partitioning.standard_logical_axis_rules())


class EncodeStep:
    """The jitted (params, tokens [batch, length], tower) -> unit embeddings step of a model.

    What `TextEncoder` runs for `encode` and `evaluate`, and what `gtr-jax compile
    --step=encode` lowers from abstract shapes. With a mesh, the tokens are split over
    `data`, the embeddings come back replicated, and the model's activation constraints
    become shardings under the mesh and the logical-axis rules when the step is traced.
    """

    def __init__(self, model: dual_encoder.DualEncoder, mesh: jax.sharding.Mesh | None = None):
        self.mesh = mesh
        self._jitted = jax.jit(
            lambda params, tokens, tower: model.apply({"params": params}, tokens, tower,
                                                      method=dual_encoder.DualEncoder.encode),
            static_argnums=2,
            out_shardings=partitioning.replicated(mesh) if mesh is not None else None,
        )

    def batch_rows(self, batch_size: int) -> int:
        """`batch_size` rounded up so that every batch splits evenly over `data`."""
        rows_multiple = self.mesh.shape[partitioning.DATA] if self.mesh is not None else 1
        return rows_multiple * math.ceil(batch_size / rows_multiple)

    def _tracing(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self.mesh is not None:
            stack.enter_context(jax.set_mesh(self.mesh))
            stack.enter_context(nn.logical_axis_rules(partitioning.standard_logical_axis_rules()))
        return stack

    def __call__(self, params, tokens, tower: str) -> jax.Array:
        """Embeddings [batch, embed_dim] of `tokens` (already placed, split over `data` with a mesh)."""
        with self._tracing():
            return self._jitted(params, tokens, tower)

    def lower(self, params, tokens, tower: str):
        """The step lowered for these (possibly abstract, sharded) arguments."""
        with self._tracing():
            return self._jitted.lower(params, tokens, tower)


class TextEncoder:
    """A DualEncoder with its params and tokenizer, turning strings into unit vectors.

    Without a tokenizer it embeds token lists only (`embed_token_lists`).
    """

    def __init__(self, model_config: dual_encoder.ModelConfig, params, tokenizer: Tokenizer | None,
                 mesh: jax.sharding.Mesh | None = None):
        self.model_config = model_config
        self.model = model_config.build()
        self.params = params
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.step = EncodeStep(self.model, mesh)

    def embed_tokens(self, tokens: np.ndarray, tower: str) -> jax.Array:
        """Embeddings [batch, embed_dim] of a padded int32 token batch (split over `data` with a mesh)."""
        if self.mesh is not None:
            sharding = partitioning.batch_sharding(self.mesh)
            tokens = jax.make_array_from_callback(tokens.shape, sharding, lambda index: tokens[index])
        return self.step(self.params, tokens, tower)

    def embed_token_lists(self, token_lists: Sequence[Sequence[int]], tower: str, max_length: int, batch_size: int = 64,
                          bar: tqdm.tqdm | None = None) -> np.ndarray:
        """float32 [len(token_lists), embed_dim] embeddings of EOS-terminated id lists, in their order."""
        # With a mesh every batch splits evenly over `data`.
        batch_size = self.step.batch_rows(batch_size)
        order = np.argsort([-len(ids) for ids in token_lists], kind="stable")
        pending = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            length = bucket_length(len(token_lists[rows[0]]), max_length)
            # A full batch_size of rows even for the last batch: one compiled shape per bucket.
            tokens = pad_batch([token_lists[i] for i in rows], length, rows=batch_size)
            pending.append((rows, self.embed_tokens(tokens, tower)))
            if bar is not None:
                bar.update(len(rows))
        embeddings = np.empty((len(token_lists), self.model_config.embed_dim), np.float32)
        for rows, batch in pending:
            embeddings[rows] = np.asarray(batch.addressable_data(0))[: len(rows)]
        return embeddings

    def embed(self, texts: Sequence[str], tower: str, max_length: int, batch_size: int = 64,
              progress: bool = True) -> np.ndarray:
        """float32 [len(texts), embed_dim] embeddings in the order of `texts`."""
        token_lists = self.tokenizer.encode(list(texts), max_length)
        with tqdm.tqdm(total=len(texts), desc=f"encode {tower}", unit="text", disable=not progress) as bar:
            return self.embed_token_lists(token_lists, tower, max_length, batch_size, bar)

    def embed_to_shards(self, texts: Sequence[str], tower: str, max_length: int, directory: str, *,
                        order: np.ndarray | None = None, shard_size: int = 262144, batch_size: int = 64,
                        fingerprint: dict | None = None, progress: bool = True) -> list[np.ndarray]:
        """Embed texts[order] (default: all, in order) into .npy shards of `shard_size` rows; return them mapped.

        Only one shard's texts and tokens are in memory at a time. Each shard is written
        whole and then renamed, so a killed run leaves complete shards only; rerun with the
        same `fingerprint` (e.g. model, step, task), it keeps them and embeds the rest.
        With several processes, process 0 writes to a directory all of them can read.
        """
        order = np.arange(len(texts)) if order is None else np.asarray(order)
        manifest = {"count": int(len(order)), "shard_size": shard_size, "tower": tower, "max_length": max_length,
                    "embed_dim": self.model_config.embed_dim, **(fingerprint or {})}
        paths = [os.path.join(directory, SHARD_FILE.format(n)) for n in range(math.ceil(len(order) / shard_size))]
        writer = jax.process_index() == 0
        if writer:
            os.makedirs(directory, exist_ok=True)
            manifest_path = os.path.join(directory, MANIFEST)
            if _read_manifest(manifest_path) != manifest:
                for name in os.listdir(directory):
                    if name.startswith("embeddings-"):
                        os.remove(os.path.join(directory, name))
                with open(manifest_path, "w", encoding="utf-8") as f:
                    json.dump(manifest, f, indent=2)
        done = np.asarray([os.path.exists(p) for p in paths], bool)
        if jax.process_count() > 1:
            # Every process must embed the same shards: the collectives of each batch pair them up.
            done = multihost_utils.broadcast_one_to_all(done)
        with tqdm.tqdm(total=len(order), desc=f"encode {tower}", unit="text", disable=not progress) as bar:
            for number, path in enumerate(paths):
                rows = order[number * shard_size : (number + 1) * shard_size]
                if done[number]:
                    bar.update(len(rows))
                    continue
                token_lists = self.tokenizer.encode(take(texts, rows), max_length)
                embeddings = self.embed_token_lists(token_lists, tower, max_length, batch_size, bar)
                if writer:
                    np.save(path + ".partial.npy", embeddings)
                    os.replace(path + ".partial.npy", path)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"embed_to_shards {directory}")
        return load_shards(directory)


def _read_manifest(path: str) -> dict | None:
    try:
        return json.loads(epath.Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_shards(directory: str) -> list[np.ndarray]:
    """The memory-mapped shards of an `embed_to_shards` directory, in row order, checked complete."""
    manifest = _read_manifest(os.path.join(directory, MANIFEST))
    if manifest is None:
        raise UserError(f"{directory}: no {MANIFEST}; not an embeddings directory")
    count, shard_size = manifest["count"], manifest["shard_size"]
    shards = []
    for number in range(math.ceil(count / shard_size)):
        path = os.path.join(directory, SHARD_FILE.format(number))
        if not os.path.exists(path):
            raise UserError(f"{path}: missing; rerun the encoding to complete {directory}")
        shards.append(np.load(path, mmap_mode="r"))
    if sum(len(s) for s in shards) != count:
        raise UserError(f"{directory}: the shards hold {sum(len(s) for s in shards)} rows, not {count}")
    return shards


def load_text_encoder(model_dir: str, step: int | None = None, vocab_path: str | None = None,
                      mesh: jax.sharding.Mesh | None = None) -> TextEncoder:
    """A TextEncoder for the given (default: newest) checkpoint of a model directory.

    With a mesh, params are placed by the logical-axis rules, as in training.
    """
    model_config = checkpoints.load_model_config(model_dir)
    shardings = param_shardings(model_config, mesh) if mesh is not None else None
    params, _ = checkpoints.restore_params(model_dir, step, shardings=shardings)
    return TextEncoder(model_config, params, Tokenizer(vocab_path or model_dir_vocabulary(model_dir)), mesh)
