"""Tiny Hugging Face / sentence-transformers T5 models written to disk, for reference tests.

Everything is built here from random weights and a SentencePiece model trained on a few
sentences: no download. The HF models are the independent reference our encoder,
importer and encoder CLI are checked against.
"""

import io
import json
import os

import sentencepiece
import torch
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration, T5Tokenizer

SENTENCES = [
    "what is the capital of france",
    "Paris is the capital and most populous city of France.",
    "how do dual encoders retrieve passages",
    "A dual encoder embeds queries and passages separately and scores them by a dot product.",
    "Same-tower negatives push queries apart from each other.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Temperature scaling sharpens the softmax over in-batch negatives.",
    "Relative position buckets grow logarithmically with distance.",
] * 8


def train_sentencepiece(path: str, vocab_size: int = 90) -> str:
    """A small unigram SentencePiece model with T5's special ids (pad 0, EOS 1, unk 2)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES),
        model_writer=model,
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


def t5_config(feed_forward="gated-gelu", num_heads=4, d_kv=16, d_model=64, vocab_size=220, **overrides) -> T5Config:
    """A small HF T5Config; vocab 220 covers 90 pieces + T5Tokenizer's 100 sentinels."""
    fields = dict(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=96,
        num_layers=3,
        num_heads=num_heads,
        feed_forward_proj=feed_forward,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=24,
        dropout_rate=0.1,
    )
    return T5Config(**{**fields, **overrides})


def random_t5(config: T5Config, seed: int = 0, seq2seq: bool = False):
    """An HF T5 (encoder-only or encoder-decoder) in eval mode with seeded random weights."""
    torch.manual_seed(seed)
    cls = T5ForConditionalGeneration if seq2seq else T5EncoderModel
    return cls(config).eval()


def write_sentence_transformers(directory: str, spm_path: str, embed_dim: int = 24, feed_forward="gated-gelu", seed=0):
    """A GTR-style sentence-transformers model: T5 encoder, mean Pooling, Dense (no bias), Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    transformer_dir = os.path.join(directory, "_transformer")
    random_t5(t5_config(feed_forward), seed).save_pretrained(transformer_dir, safe_serialization=True)
    T5Tokenizer(spm_path, legacy=True).save_pretrained(transformer_dir)
    transformer = models.Transformer(transformer_dir, max_seq_length=32)
    d_model = transformer.get_embedding_dimension()
    torch.manual_seed(seed + 1)
    dense = models.Dense(d_model, embed_dim, bias=False, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[transformer, models.Pooling(d_model, "mean"), dense, models.Normalize()])
    model.save(directory, safe_serialization=True)
    return directory


def read_json(path):
    """The parsed JSON document at path."""
    with open(path) as f:
        return json.load(f)
