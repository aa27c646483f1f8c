"""Benchmark (not a test): the input pipeline's examples/s against what a train step consumes.

Pipeline: `pipeline.batch_iterator` producing tokenized, padded numpy batches of one host,
  demo_train                   the embedded docstring pairs (short texts);
  msmarco_train_qidpidtriples  a synthetic MS MARCO directory in the official formats
                               (passages of ~56 words like the real ones), one hard
                               negative per query, i.e. three texts per example.
  Also timed: reading and checking the synthetic collection.tsv (the MS MARCO loader).
Train step: a T5.1.1-small-shaped SDE dual encoder (d512/L8/H6/ff1024, vocab 32128)
  value_and_grad of the in-batch contrastive loss + Adafactor update, jitted, on the
  same batches (with the hard negatives for the MS MARCO run), on this CPU.
The pipeline keeps up when its examples/s exceed the step's; the ratio says by how much.

    python bench/bench_data.py [--batch 32] [--query_length 64] [--doc_length 128]
                               [--passages 200000] [--train_steps 2] [--no_train]
"""

import argparse
import itertools
import os
import random
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gin  # noqa: E402
import numpy as np  # noqa: E402

import tasks  # noqa: E402, F401
from gtr_jax.data import pipeline  # noqa: E402
from gtr_jax.data.sources import demo, msmarco  # noqa: E402


def write_synthetic_msmarco(directory: str, passages: int, seed: int = 0) -> None:
    """collection, queries.train, qrels.train and qidpidtriples of random demo-corpus words."""
    rng = random.Random(seed)
    words = sorted({w for text in demo.texts("train") for w in text.split() if w.isalpha()})
    queries = passages // 4

    def text(n):
        return " ".join(rng.choices(words, k=n))

    with open(os.path.join(directory, "collection.tsv"), "w") as f:
        f.writelines(f"{pid}\t{text(rng.randint(40, 72))}.\n" for pid in range(passages))
    with open(os.path.join(directory, "queries.train.tsv"), "w") as f:
        f.writelines(f"{qid}\t{text(rng.randint(4, 9))}\n" for qid in range(queries))
    with open(os.path.join(directory, "qrels.train.tsv"), "w") as f:
        f.writelines(f"{qid}\t0\t{qid * 4}\t1\n" for qid in range(queries))
    with open(os.path.join(directory, "qidpidtriples.train.full.2.tsv"), "w") as f:
        f.writelines(f"{qid}\t{qid * 4}\t{rng.randrange(passages)}\n" for qid in range(queries))


def pipeline_rate(task: str, batch: int, lengths: dict, steps: int = 40) -> tuple[float, dict]:
    """(examples/s, first batch) of batch_iterator once its data is loaded (first batch excluded)."""
    batches = pipeline.batch_iterator(task, global_batch_size=batch, feature_lengths=lengths, seed=0, prefetch=1)
    first = next(batches)
    start = time.perf_counter()
    for _ in itertools.islice(batches, steps):
        pass
    return steps * batch / (time.perf_counter() - start), first


def train_step_rate(batch_np: dict, steps: int) -> float:
    """Examples/s of a jitted T5.1.1-small SDE train step (forward, backward, Adafactor) on batch_np."""
    import jax
    import optax

    from gtr_jax.model import dual_encoder, t5
    from gtr_jax import losses

    config = dual_encoder.ModelConfig(t5.T5Config(), "sde", 768)
    model = config.build()
    tokens = {k: batch_np[k] for k in ("query_tokens", "doc_tokens", "negative_tokens") if k in batch_np}
    params = model.init(jax.random.key(0), *tokens.values())["params"]
    optimizer = optax.adafactor(1e-3, decay_rate=0.8, clipping_threshold=1.0, multiply_by_parameter_scale=True)
    opt_state = optimizer.init(params)

    def loss_fn(params, batch, rng):
        q, d, n = model.apply({"params": params}, *(batch[k] for k in tokens), deterministic=False, rngs={"dropout": rng})
        loss, _ = losses.contrastive_loss(
            q, d, temperature=0.01, hard_neg_emb=n, query_ids=batch["query_ids"], doc_ids=batch["doc_ids"],
            hard_neg_ids=batch.get("negative_ids"),
        )
        return loss

    @jax.jit
    def step(params, opt_state, batch, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    batch = dict(batch_np)
    params, opt_state, loss = step(params, opt_state, batch, jax.random.key(1))  # compile
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, batch, jax.random.key(2 + i))
    jax.block_until_ready(loss)
    return steps * len(batch["query_ids"]) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--query_length", type=int, default=64)
    parser.add_argument("--doc_length", type=int, default=128)
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--train_steps", type=int, default=2)
    parser.add_argument("--no_train", action="store_true", help="time the pipeline only")
    args = parser.parse_args()
    lengths = {"query": args.query_length, "doc": args.doc_length}
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        write_synthetic_msmarco(directory, args.passages)
        gin.parse_config([f"msmarco_dir.directory = '{directory}'", f"Tokenizer.path = '{demo.DEMO_VOCABULARY}'"])
        size_mb = os.path.getsize(os.path.join(directory, "collection.tsv")) / 1e6
        start = time.perf_counter()
        pairs = msmarco.train_qidpidtriples()
        load_s = time.perf_counter() - start
        print(f"load+check collection.tsv ({args.passages} passages, {size_mb:.0f} MB) + queries + "
              f"{len(pairs)} qidpidtriples: {load_s:.2f} s ({args.passages / load_s:,.0f} passages/s)")
        for task in ("demo_train", "msmarco_train_qidpidtriples"):
            rate, first = pipeline_rate(task, args.batch, lengths)
            rows.append((task, rate, first))
            print(f"pipeline {task:30s} {rate:10,.0f} examples/s  (batch {args.batch}, lengths {lengths})")
    if args.no_train:
        return
    for task, rate, first in rows:
        step_rate = train_step_rate(first, args.train_steps)
        print(f"train step on {task:25s} {step_rate:10,.2f} examples/s  ({args.batch / step_rate:.2f} s/step); "
              f"pipeline / step = {rate / step_rate:,.0f}x")


if __name__ == "__main__":
    main()
