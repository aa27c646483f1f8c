"""A small BEIR-format evaluation set of real text (the demo's docstrings) and tiny model directories."""

import json
import os
import shutil

import jax
import numpy as np
from flax.core import meta

from gtr_jax.train import checkpoints
from gtr_jax.data.sources import demo
from gtr_jax.model import dual_encoder, t5
from gtr_jax.data.sources.demo import DEMO_VOCABULARY

# A small lexical corpus for BM25 rankings. Ids out of order, so that index order (descending
# id) is not insertion order. Ties: doc07 and doc21 are the same text; doc03, doc26, doc11 and
# doc18 each hold "capital" once in 3 tokens.
BM25_CORPUS = {
    "doc12": "The quick brown fox jumps over the lazy dog.",
    "doc05": "A quick brown dog runs in the park.",
    "doc07": "The red fox hunts at night.",
    "doc21": "The red fox hunts at night.",
    "doc30": "Foxes and dogs are both mammals.",
    "doc01": "Cats chase mice around the house.",
    "doc16": "A cat sleeps on the warm mat.",
    "doc09": "Mice eat cheese in the kitchen.",
    "doc24": "The kitchen has a red door.",
    "doc03": "Paris is the capital of France.",
    "doc26": "Berlin is the capital of Germany.",
    "doc11": "Rome is the capital of Italy.",
    "doc18": "Madrid is the capital of Spain.",
    "doc14": "The Seine flows through Paris.",
    "doc28": "The Rhine flows through Germany.",
    "doc02": "Running is good exercise for people.",
    "doc19": "She runs every morning before work.",
    "doc08": "He ran a marathon last year.",
    "doc27": "Python is a programming language.",
    "doc10": "Java is a programming language too.",
    "doc22": "Programming in Python is fun.",
    "doc04": "Snakes like the python live in jungles.",
    "doc29": "Jungle animals include tigers and snakes.",
    "doc15": "Tigers are large striped cats.",
    "doc06": "Lions and tigers are big cats.",
    "doc25": "The stock market fell sharply today.",
    "doc13": "Markets rose after the announcement.",
    "doc20": "Bread and cheese make a simple lunch.",
    "doc17": "Lunch is served at noon in the kitchen.",
    "doc23": "A dog is a loyal companion.",
}

DUPLICATE_IDS = ("dup-a", "dup-b")  # the same passage twice: its two copies always tie


def write_demo_beir(directory: str, num_queries: int = 120, num_distractors: int = 40) -> str:
    """corpus.jsonl, queries.jsonl and qrels/test.tsv from demo pairs, with graded, zero and extra judgments.

    Query ids differ from passage ids ("q:" prefix), so BEIR's rule of never retrieving a
    query's own id leaves every ranking whole.
    """
    pairs = demo.all_pairs()[: num_queries + num_distractors]
    corpus = [{"_id": name, "title": "", "text": passage} for name, _, passage, _ in pairs]
    copy = "A passage that appears twice in the corpus."
    corpus += [{"_id": i, "title": "copy", "text": copy} for i in DUPLICATE_IDS]
    queries = [{"_id": f"q:{name}", "text": query} for name, query, _, _ in pairs[:num_queries]]
    qrels = ["query-id\tcorpus-id\tscore"]
    for i, (name, _, _, _) in enumerate(pairs[:num_queries]):
        qrels.append(f"q:{name}\t{name}\t{2 if i % 3 == 0 else 1}")
        if i % 5 == 0:  # a second, less relevant passage
            qrels.append(f"q:{name}\t{pairs[num_queries + i % num_distractors][0]}\t1")
        if i % 7 == 0:  # a judged non-relevant one
            qrels.append(f"q:{name}\t{pairs[(i + 1) % num_queries][0]}\t0")
    qrels.append(f"q:{pairs[0][0]}\t{DUPLICATE_IDS[0]}\t1")
    os.makedirs(os.path.join(directory, "qrels"), exist_ok=True)
    for name, records in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
    with open(os.path.join(directory, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(qrels) + "\n")
    return directory


def tiny_config(tower: str = "ade_spl", embed_dim: int = 32) -> dual_encoder.ModelConfig:
    """The tiny T5.1.1 of tests/tiny_train.gin with the demo vocabulary's 4,000 pieces."""
    encoder = t5.T5Config(vocab_size=4096, d_model=64, num_layers=2, num_heads=4, d_kv=16, d_ff=128, dropout_rate=0.0)
    return dual_encoder.ModelConfig(encoder, tower, embed_dim, query_max_length=32, doc_max_length=64)


def random_model_dir(directory: str, seed: int, config: dual_encoder.ModelConfig | None = None) -> str:
    """A model directory of seeded random params (unit norm scales), with the demo vocabulary."""
    config = config or tiny_config()
    # Random numbers in numpy: compiling the model's own init takes ~10 s on this CPU.
    rng = np.random.default_rng(seed)

    def draw(x):
        if x.ndim == 1:
            return np.ones(x.shape, np.float32)
        return rng.normal(0, x.shape[0] ** -0.5, x.shape).astype(np.float32)

    params = jax.tree.map(draw, meta.unbox(checkpoints.boxed_param_shapes(config)))
    os.makedirs(directory, exist_ok=True)
    checkpoints.write_model_dir(directory, config, params)
    shutil.copy(DEMO_VOCABULARY, os.path.join(directory, "spiece.model"))
    return directory
