"""Exact top-k search by dot product, sharded over devices and chunked over the corpus.

The corpus is one [n, dim] array or a list of such blocks (e.g. memory-mapped shards
written by `encoding.TextEncoder.embed_to_shards`, for corpora bigger than memory).
Blocks are searched one after another; each is split into equal row ranges over every
device of the mesh, and each device walks its range in chunks of `chunk_size` rows:
scores of a chunk [queries, chunk] (float32, highest matmul precision, also on TPU),
then the chunk's exact top k (preselected by group maxima, see _chunk_candidates) merged
into the device's running top k. The devices' lists are all-gathered and merged, and
each block's list into the result of the blocks before it. Memory is
O(queries × chunk) per device beyond the block itself.

Ties: equal scores are ordered by corpus row, lower first, exactly as the brute-force
`np.lexsort((rows, -scores))[:k]`. `jax.lax.top_k` returns the lower index first among
equal values, and every selection and merge puts the candidates of lower rows first.
Callers that need trec_eval's rule (ties by document id descending) put the corpus in
descending id order (`trec_order`).

`approximate=True` uses `jax.lax.approx_max_k` per chunk instead: fast on TPU, where it
may miss true neighbours (recall ≈ `recall_target`); elsewhere XLA computes it exactly.
"""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gtr_jax.errors import UserError
from gtr_jax.train import partitioning

# Exact top-k preselects groups of GROUP consecutive rows when a chunk has at least
# GROUP * max(k, MIN_GROUPS) rows (see _chunk_candidates).
GROUP = 16
MIN_GROUPS = 64


def trec_order(doc_ids) -> np.ndarray:
    """Corpus positions in descending id order (trec_eval's tie order)."""
    ids = np.asarray(list(doc_ids))
    return np.argsort(ids, kind="stable")[::-1]


def default_mesh() -> jax.sharding.Mesh:
    """A one-axis mesh ('data') over every device, built by `partitioning.make_mesh`.

    Every argument is passed explicitly, so gin bindings of `make_mesh` (the training
    mesh's shape) do not reach the search's default.
    """
    return partitioning.make_mesh(mesh_shape=(-1,), axis_names=(partitioning.DATA,), num_devices=None)


def _chunk_candidates(scores, rows, k, approximate, recall_target):
    """(scores, rows) [queries, m] holding one chunk's top k, for `_merge`; equal scores in row order.

    Exact selection keeps the k groups of GROUP consecutive rows with the best maxima:
    the chunk's top k lie in them (a top-k row outside them would be beaten by the k
    better group maxima). XLA's CPU top_k is a single-threaded partial sort whose cost
    grows with the row length, so chunk/GROUP maxima plus k·GROUP candidates (left for
    the merge to select from) cost far less than the whole chunk. The kept groups are put
    back in row order, so ties still go to the lower row.
    """
    if approximate:
        top, picked = jax.lax.approx_max_k(scores, k, recall_target=recall_target)
        return top, rows[picked]
    num_queries, width = scores.shape
    if width < GROUP * max(k, MIN_GROUPS):
        top, picked = jax.lax.top_k(scores, k)
        return top, rows[picked]
    groups = scores.reshape(num_queries, width // GROUP, GROUP)
    _, best_groups = jax.lax.top_k(groups.max(axis=2), k)
    best_groups = jnp.sort(best_groups, axis=1)
    candidates = jnp.take_along_axis(groups, best_groups[:, :, None], axis=1).reshape(num_queries, k * GROUP)
    candidate_rows = (best_groups[:, :, None] * GROUP + jnp.arange(GROUP)).reshape(num_queries, k * GROUP)
    return candidates, rows[candidate_rows]


def _merge(scores_a, rows_a, scores_b, rows_b, k):
    """Top k of two candidate lists; on equal scores the first list's entries come first."""
    scores, picked = jax.lax.top_k(jnp.concatenate([scores_a, scores_b], axis=1), k)
    return scores, jnp.take_along_axis(jnp.concatenate([rows_a, rows_b], axis=1), picked, axis=1)


def _device_top_k(queries, block, valid_rows, *, k, chunk_size, axes, approximate, recall_target):
    """Per device (inside shard_map): top k of its row range of the block, then merged over devices."""
    local_rows, dim = block.shape
    first_row = jax.lax.axis_index(axes) * local_rows  # this device's first row within the block
    chunk_starts = jnp.arange(0, local_rows, chunk_size)

    def step(best, inputs):
        chunk, start = inputs
        scores = jnp.dot(queries, chunk.T, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
        rows = first_row + start + jnp.arange(chunk_size)
        # Rows past the block's end are padding: they must never win.
        scores = jnp.where(rows[None, :] < valid_rows, scores, -jnp.inf)
        return _merge(*best, *_chunk_candidates(scores, rows, k, approximate, recall_target), k), None

    empty = (jnp.full((queries.shape[0], k), -jnp.inf, jnp.float32), jnp.full((queries.shape[0], k), -1, jnp.int32))
    # The running list differs per device once a chunk is merged in; so it does from the start.
    empty = jax.lax.pcast(empty, axes, to="varying")
    best, _ = jax.lax.scan(step, empty, (block.reshape(-1, chunk_size, dim), chunk_starts))
    # Devices hold increasing row ranges, so gathering in device order keeps lower rows first.
    gathered = [jax.lax.all_gather(x, axes, axis=1, tiled=True, to="invarying") for x in best]
    scores, picked = jax.lax.top_k(gathered[0], k)
    return scores, jnp.take_along_axis(gathered[1], picked, axis=1)


@functools.lru_cache(maxsize=16)
def _compiled_search(mesh, k, chunk_size, approximate, recall_target):
    """jit of: (running top k, queries, block, offset, valid rows) -> running top k with the block merged."""
    axes = tuple(mesh.axis_names)
    per_device = jax.shard_map(
        functools.partial(_device_top_k, k=k, chunk_size=chunk_size, axes=axes, approximate=approximate,
                          recall_target=recall_target),
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axes), PartitionSpec()),
        out_specs=PartitionSpec(),
    )

    def search_block(best_scores, best_rows, queries, block, offset, valid_rows):
        scores, rows = per_device(queries, block, valid_rows)
        # Earlier blocks hold lower rows: they go first in the merge.
        return _merge(best_scores, best_rows, scores, rows + offset, k)

    return jax.jit(search_block, donate_argnums=(0, 1))


def _put(array: np.ndarray, rows: int, sharding, dtype=np.float32) -> jax.Array:
    """array as `dtype`, zero-padded to `rows` rows and placed with `sharding`, one device's slice at a time.

    Every process holds (or maps) the whole array, so this also works when the mesh spans processes.
    """

    def device_slice(index):
        row_slice = index[0]
        start, stop = row_slice.start or 0, rows if row_slice.stop is None else row_slice.stop
        part = np.asarray(array[start : min(stop, len(array))], dtype)
        if len(part) < stop - start:
            part = np.concatenate([part, np.zeros((stop - start - len(part),) + array.shape[1:], dtype)])
        return part

    return jax.make_array_from_callback((rows,) + array.shape[1:], sharding, device_slice)


def _host(x: jax.Array) -> np.ndarray:
    """A replicated array's value on this host (also in multi-process runs)."""
    return np.asarray(x.addressable_data(0))


def search(
    queries: np.ndarray,
    corpus: np.ndarray | Sequence[np.ndarray],
    k: int,
    *,
    mesh: jax.sharding.Mesh | None = None,
    chunk_size: int = 16384,
    query_batch_size: int = 1024,
    approximate: bool = False,
    recall_target: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [num_queries, k], corpus rows int64 [num_queries, k]), best first.

    `corpus` is an array or a list of blocks whose rows are numbered in order. k larger
    than the corpus is cut to the corpus size.
    """
    blocks = [corpus] if isinstance(corpus, np.ndarray) else list(corpus)
    blocks = [b for b in blocks if len(b)]
    total = sum(len(b) for b in blocks)
    queries = np.asarray(queries, np.float32)
    if not total or not len(queries):
        raise UserError("search needs at least one query and one corpus row")
    if any(b.ndim != 2 or b.shape[1] != queries.shape[1] for b in blocks):
        raise UserError(f"corpus rows and queries must have the same size ({queries.shape[1]})")
    if total >= 2**31:
        raise UserError(f"a corpus of {total} rows is more than int32 row numbers can address")
    k = min(k, total)
    mesh = mesh or default_mesh()
    devices = mesh.devices.size
    # Every block gets the largest block's padded shape: one compiled program for all.
    largest = max(len(b) for b in blocks)
    # At least k rows (top_k's need) and whole groups of GROUP rows (_chunk_candidates').
    chunk = GROUP * math.ceil(max(min(chunk_size, math.ceil(largest / devices)), k) / GROUP)
    rows_per_block = devices * chunk * math.ceil(largest / (devices * chunk))
    block_sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
    replicated = NamedSharding(mesh, PartitionSpec())
    step = _compiled_search(mesh, k, chunk, approximate, recall_target)

    batch = min(query_batch_size, len(queries))
    starts = range(0, len(queries), batch)
    query_batches = [_put(queries[s : s + batch], batch, replicated) for s in starts]
    empty_scores, empty_rows = np.full((batch, k), -np.inf), np.full((batch, k), -1)
    best = [(_put(empty_scores, batch, replicated), _put(empty_rows, batch, replicated, np.int32)) for _ in starts]
    offset = 0
    for block in blocks:
        placed = _put(block, rows_per_block, block_sharding)
        valid = np.int32(len(block))
        best = [step(*running, q, placed, np.int32(offset), valid) for running, q in zip(best, query_batches)]
        offset += len(block)
    scores = np.concatenate([_host(s) for s, _ in best])[: len(queries)]
    rows = np.concatenate([_host(r) for _, r in best])[: len(queries)].astype(np.int64)
    return scores, rows
