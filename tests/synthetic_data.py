"""A gin-configurable synthetic input pipeline for trainer tests: learnable, seeded, resumable.

Each pair's document starts with its query's first tokens, so a model can learn to match
them. The batch of step s is a pure function of (seed, s), like the real pipeline's.
"""

import time

import gin
import numpy as np


def pair_table(num_pairs: int, vocab_size: int, query_length: int = 8, doc_length: int = 12):
    """(queries, docs) int32 token tables, EOS-terminated."""
    rng = np.random.default_rng(1234)
    queries = rng.integers(3, vocab_size, (num_pairs, query_length)).astype(np.int32)
    queries[:, -1] = 1
    docs = rng.integers(3, vocab_size, (num_pairs, doc_length)).astype(np.int32)
    docs[:, : query_length // 2] = queries[:, : query_length // 2]
    docs[:, -1] = 1
    return queries, docs


@gin.configurable
def synthetic_pairs(*, global_batch_size, start_step, shard_index, num_shards, seed, num_pairs=64, vocab_size=64,
                    negatives=0, step_delay=0.0):
    """Yields this shard's rows of each step's batch, from `start_step` on."""
    queries, docs = pair_table(num_pairs, vocab_size)
    rows = global_batch_size // num_shards
    step = start_step
    while True:
        order = np.random.default_rng([seed, step]).permutation(num_pairs)[:global_batch_size]
        mine = order[shard_index * rows : (shard_index + 1) * rows]
        batch = {"query_tokens": queries[mine], "doc_tokens": docs[mine], "query_ids": mine.astype(np.int32),
                 "doc_ids": mine.astype(np.int32)}
        if negatives:
            other = (mine[:, None] + np.arange(1, negatives + 1)[None]) % num_pairs
            batch["negative_tokens"] = docs[other]
            batch["negative_ids"] = other.astype(np.int32)
        time.sleep(step_delay)
        yield batch
        step += 1
