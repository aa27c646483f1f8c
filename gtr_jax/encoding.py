"""Batched embedding of texts with one tower of a trained or imported model.

Texts are sorted by token length so that each batch pads little, and each batch is
padded to a length from a short list of buckets so that XLA compiles a handful of
programs, not one per batch. Batches are dispatched without waiting for results, and
results come back to the host once, at the end.
"""

import jax
import numpy as np
import tqdm

from gtr_jax import checkpoints, dual_encoder
from gtr_jax.vocab import Tokenizer, model_dir_vocabulary, pad_batch

MIN_BUCKET = 16


def bucket_length(length: int, max_length: int) -> int:
    """Smallest power of two ≥ length (at least MIN_BUCKET), capped at max_length."""
    bucket = MIN_BUCKET
    while bucket < length:
        bucket *= 2
    return min(bucket, max_length)


class TextEncoder:
    """A DualEncoder with its params and tokenizer, turning strings into unit vectors."""

    def __init__(self, model_config: dual_encoder.ModelConfig, params, tokenizer: Tokenizer):
        self.model_config = model_config
        self.model = model_config.build()
        self.params = params
        self.tokenizer = tokenizer
        self._encode = jax.jit(
            lambda params, tokens, tower: self.model.apply(
                {"params": params}, tokens, tower, method=dual_encoder.DualEncoder.encode
            ),
            static_argnums=2,
        )

    def embed_tokens(self, tokens: np.ndarray, tower: str) -> jax.Array:
        """Embeddings [batch, embed_dim] of a padded int32 token batch."""
        return self._encode(self.params, tokens, tower)

    def embed(self, texts: list[str], tower: str, max_length: int, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """float32 [len(texts), embed_dim] embeddings in the order of `texts`."""
        token_lists = self.tokenizer.encode(texts, max_length)
        order = np.argsort([-len(ids) for ids in token_lists], kind="stable")
        pending = []
        for start in tqdm.trange(0, len(order), batch_size, desc=f"encode {tower}", unit="batch", disable=not progress):
            rows = order[start : start + batch_size]
            length = bucket_length(len(token_lists[rows[0]]), max_length)
            # A full batch_size of rows even for the last batch: one compiled shape per bucket.
            tokens = pad_batch([token_lists[i] for i in rows], length, rows=batch_size)
            pending.append((rows, self.embed_tokens(tokens, tower)))
        embeddings = np.empty((len(texts), self.model_config.embed_dim), np.float32)
        for rows, batch in pending:
            embeddings[rows] = np.asarray(batch)[: len(rows)]
        return embeddings


def load_text_encoder(model_dir: str, step: int | None = None, vocab_path: str | None = None) -> TextEncoder:
    """A TextEncoder for the given (default: newest) checkpoint of a model directory."""
    model_config = checkpoints.load_model_config(model_dir)
    params, _ = checkpoints.restore_params(model_dir, step)
    return TextEncoder(model_config, params, Tokenizer(vocab_path or model_dir_vocabulary(model_dir)))
