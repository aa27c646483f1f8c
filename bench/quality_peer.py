"""The sentence-transformers peer of the quality benchmark: a GTR dual encoder trained in PyTorch.

Set up as a sentence-transformers user would build the same model from scratch:
`T5EncoderModel(T5Config(...))` with Hugging Face's own initialization, mean `Pooling`,
a bias-free `Dense` (torch.nn.Linear's default init), `Normalize`;
`torch.optim.Adafactor(lr=...)` under a `LambdaLR` of linear warmup then linear decay to 0
(the same schedule as gtr_jax's `optim.linear_schedule`); `MultipleNegativesRankingLoss`
with scale 1/τ, query-to-document (in-batch softmax) or also query-to-query (SamToNe on the
query side), `partition_mode="joint"`.

Token ids come from gtr_jax's own tokenizer (SentencePiece, EOS appended, truncated to the
tower's length), so the two trainers see identical inputs; the peer feeds them to its
modules as `input_ids` / `attention_mask`, which is what sentence-transformers' own
tokenizer would hand them.
"""

import os

import numpy as np
import torch

from gtr_jax.train import optim
from gtr_jax.model import t5

LOSS_DIRECTIONS = {"in_batch": ("query_to_doc",), "samtone": ("query_to_doc", "query_to_query")}


def hf_t5_config(config: t5.T5Config):
    """The Hugging Face T5Config of gtr_jax's encoder config."""
    from transformers import T5Config

    return T5Config(vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
                    num_layers=config.num_layers, num_heads=config.num_heads,
                    feed_forward_proj=config.feed_forward, dropout_rate=config.dropout_rate,
                    relative_attention_num_buckets=config.relative_attention_num_buckets,
                    relative_attention_max_distance=config.relative_attention_max_distance,
                    layer_norm_epsilon=config.layer_norm_epsilon, is_encoder_decoder=False, use_cache=False)


def build_model(config: t5.T5Config, embed_dim: int, vocabulary: str, seed: int, workdir: str,
                max_seq_length: int = 128):
    """A freshly initialized GTR-style SentenceTransformer (seeded), built under `workdir`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import T5EncoderModel, T5Tokenizer

    torch.manual_seed(seed)
    transformer_dir = os.path.join(workdir, "init_transformer")
    T5EncoderModel(hf_t5_config(config)).save_pretrained(transformer_dir, safe_serialization=True)
    T5Tokenizer(vocabulary, extra_ids=0, legacy=True).save_pretrained(transformer_dir)
    transformer = modules.Transformer(transformer_dir, max_seq_length=max_seq_length)
    dense = modules.Dense(config.d_model, embed_dim, bias=False, activation_function=torch.nn.Identity())
    return SentenceTransformer(modules=[transformer, modules.Pooling(config.d_model, "mean"), dense,
                                        modules.Normalize()], device="cpu")


def make_optimizer(model, *, base_learning_rate: float, warmup_steps: int, total_steps: int):
    """torch.optim.Adafactor at `base_learning_rate` under gtr_jax's warmup + linear-decay schedule."""
    optimizer = torch.optim.Adafactor(model.parameters(), lr=base_learning_rate)
    factor = lambda step: float(optim.linear_schedule(step, base_learning_rate=1.0, total_steps=total_steps,
                                                      warmup_steps=warmup_steps))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loss(model, loss: str, temperature: float):
    """MultipleNegativesRankingLoss: in-batch softmax or SamToNe (query side), scale 1/τ."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(model, scale=1 / temperature, directions=LOSS_DIRECTIONS[loss],
                                        partition_mode="joint")


def features(tokens: np.ndarray) -> dict:
    """A padded [batch, length] id array (0 = padding) as sentence-transformers' features."""
    ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def train_step(model, loss_fn, optimizer, scheduler, query_tokens, doc_tokens) -> float:
    """One optimizer step on a batch of (query, document) token ids; returns the loss."""
    model.train()
    loss = loss_fn([features(query_tokens), features(doc_tokens)], None)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


@torch.no_grad()
def encode(model, tokens: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Unit embeddings [n, embed_dim] float32 of padded token ids."""
    model.eval()
    out = [model(features(tokens[i : i + batch_size]))["sentence_embedding"].numpy()
           for i in range(0, len(tokens), batch_size)]
    return np.concatenate(out).astype(np.float32)
