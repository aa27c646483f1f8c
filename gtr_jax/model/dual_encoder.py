"""GTR dual encoder: T5 encoder(s), mean pooling, a bias-free projection, L2 normalization.

Three tower layouts (paper §3):
  sde      one encoder and one projection shared by queries and documents;
  ade      a query encoder + projection and a document encoder + projection;
  ade_spl  two encoders sharing one projection (the paper's best with SamToNe).
The score of a (query, document) pair is the dot product of their embeddings, which is
their cosine since both are unit vectors.
"""

import dataclasses
import json
from typing import Literal

import flax.linen as nn
import gin
import jax.numpy as jnp

from gtr_jax.model import t5

Tower = Literal["sde", "ade", "ade_spl"]
TOWERS = ("sde", "ade", "ade_spl")
PROJECTION = "projection"  # logical name of the embedding axis; replicated by default


def mean_pool(hidden, tokens):
    """Mean of the hidden states of non-padding tokens (EOS included), float32 [batch, d_model]."""
    mask = (tokens != 0).astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
    # The same floor as sentence-transformers' Pooling, so an all-padding row gives 0, not NaN.
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def l2_normalize(x, epsilon=1e-12):
    """x / max(||x||, epsilon), like torch.nn.functional.normalize."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), epsilon)


class Projection(nn.Module):
    """Bias-free dense map from d_model to the embedding size, in float32 at any compute dtype.

    Drawn from a truncated normal of std d_model^-1/2 (flax's lecun_normal), t5x's dense
    default. sentence-transformers' Dense (torch.nn.Linear) draws U(±d_model^-1/2), std
    d_model^-1/2/sqrt(3); the scale does not change training: the output is L2-normalized
    and Adafactor's steps are proportional to the parameter's RMS, so a kernel scaled by c
    trains to c times the same kernel.
    """

    embed_dim: int

    @nn.compact
    def __call__(self, pooled):
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), (t5.EMBED, PROJECTION))
        dense = nn.Dense(self.embed_dim, use_bias=False, dtype=jnp.float32, kernel_init=init, name="dense")
        return dense(pooled.astype(jnp.float32))


class DualEncoder(nn.Module):
    """Maps query and document token ids [batch, length] to unit embeddings [batch, embed_dim].

    Parameter tree (what `gtr-jax import` writes and the trainer updates):
      sde:     encoder, projection
      ade:     query_encoder, doc_encoder, query_projection, doc_projection
      ade_spl: query_encoder, doc_encoder, projection
    """

    config: t5.T5Config
    tower: Tower = "sde"
    embed_dim: int = 768

    def setup(self):
        if self.tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}, not {self.tower!r}")
        if self.tower == "sde":
            self.encoder = t5.T5Encoder(self.config)
            self.projection = Projection(self.embed_dim)
        else:
            self.query_encoder = t5.T5Encoder(self.config)
            self.doc_encoder = t5.T5Encoder(self.config)
            if self.tower == "ade":
                self.query_projection = Projection(self.embed_dim)
                self.doc_projection = Projection(self.embed_dim)
            else:
                self.projection = Projection(self.embed_dim)

    def _embed(self, encoder, projection, tokens, deterministic):
        hidden = encoder(tokens, deterministic=deterministic)
        return l2_normalize(projection(mean_pool(hidden, tokens)))

    def encode_queries(self, tokens, deterministic: bool = True):
        """Unit query embeddings [batch, embed_dim], float32."""
        if self.tower == "sde":
            return self._embed(self.encoder, self.projection, tokens, deterministic)
        projection = self.query_projection if self.tower == "ade" else self.projection
        return self._embed(self.query_encoder, projection, tokens, deterministic)

    def encode_docs(self, tokens, deterministic: bool = True):
        """Unit document embeddings [batch, embed_dim], float32."""
        if self.tower == "sde":
            return self._embed(self.encoder, self.projection, tokens, deterministic)
        projection = self.doc_projection if self.tower == "ade" else self.projection
        return self._embed(self.doc_encoder, projection, tokens, deterministic)

    def encode(self, tokens, tower: Literal["query", "doc"], deterministic: bool = True):
        """Embeddings from the query or the document tower, for indexing and serving."""
        if tower == "query":
            return self.encode_queries(tokens, deterministic)
        if tower == "doc":
            return self.encode_docs(tokens, deterministic)
        raise ValueError(f"tower must be 'query' or 'doc', not {tower!r}")

    def __call__(self, query_tokens, doc_tokens, negative_tokens=None, deterministic: bool = True):
        """Training forward pass: (query_emb, doc_emb, negative_emb or None).

        `negative_tokens` [batch, num_negatives, length] are hard negatives, encoded by the
        document tower and returned as [batch, num_negatives, embed_dim].
        """
        query_emb = self.encode_queries(query_tokens, deterministic)
        doc_emb = self.encode_docs(doc_tokens, deterministic)
        if negative_tokens is None:
            return query_emb, doc_emb, None
        batch, num_negatives, length = negative_tokens.shape
        negative_emb = self.encode_docs(negative_tokens.reshape(batch * num_negatives, length), deterministic)
        return query_emb, doc_emb, negative_emb.reshape(batch, num_negatives, -1)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a `DualEncoder`; saved as `model_config.json` in a model dir."""

    encoder: t5.T5Config = dataclasses.field(default_factory=t5.T5Config)
    tower: Tower = "sde"
    embed_dim: int = 768
    # Default truncation lengths (EOS included) of each tower when encoding.
    query_max_length: int = 64
    doc_max_length: int = 256

    def __post_init__(self):
        if self.tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}, not {self.tower!r}")

    def build(self) -> DualEncoder:
        """The flax module this config describes."""
        return DualEncoder(self.encoder, self.tower, self.embed_dim)

    def max_length(self, tower: Literal["query", "doc"]) -> int:
        """Default truncation length of the query or document tower."""
        return self.query_max_length if tower == "query" else self.doc_max_length

    def to_json(self) -> str:
        """A JSON document `from_json` reads back."""
        fields = dataclasses.asdict(self)
        return json.dumps(fields, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        """Inverse of `to_json`."""
        fields = json.loads(text)
        return cls(**{**fields, "encoder": t5.T5Config.from_dict(fields["encoder"])})
