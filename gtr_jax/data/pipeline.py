"""Dual-encoder seqio tasks and the training input pipeline, from any registered task to the mesh.

Tasks are registered with `register_task` (tasks/ does it for MS MARCO, MultiReQA,
BEIR and the demo): a seqio Task whose source is a loader of `examples.Pairs`, and,
for evaluation tasks, a loader of the `examples.EvalSet` the evaluator ranks. Loaders
read the data directories from gin when a dataset is built, never at import.

`batch_iterator` is the trainer's pipeline. Its batches are a pure function of
(seed, step), whatever the number of hosts:
  * each task's examples form a stream of epochs, each a fresh permutation drawn from
    (seed, task, epoch); a batch takes the next examples of each stream;
  * a mixture draws each step's share of each task from (seed, step block): per
    example with probability proportional to the rates, or the whole batch from one
    task (`single_task_batches`, so in-batch negatives share a domain);
  * host i of n takes rows [i*b, (i+1)*b) of the global batch, b = batch / n.
Resuming at `start_step=k` therefore yields exactly the batches a run that never
stopped would have seen from step k on, in O(k / 1024) work, and the n hosts of one
epoch together see every example once. Each host holds all examples (texts stay
bytes until a batch decodes them) and tokenizes only its own rows.
"""

import concurrent.futures
import dataclasses
import functools
from typing import Callable, Iterator

import gin
import numpy as np
import seqio
import tensorflow as tf

from gtr_jax.data import features
from gtr_jax.errors import UserError
from gtr_jax.data.examples import EvalSet, Pairs, stable_ids

STEPS_PER_BLOCK = 1024  # a mixture's per-step task counts are drawn this many steps at a time


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """How a registered task loads its examples (and, if it is an eval task, its eval set)."""

    split: str
    pairs: Callable[[], Pairs]
    eval_set: Callable[[], EvalSet] | None
    num_negatives: int


SOURCES: dict[str, TaskSource] = {}


def register_task(
    name: str,
    split: str,
    pairs: Callable[[], Pairs],
    *,
    eval_set: Callable[[], EvalSet] | None = None,
    num_negatives: int = 0,
    vocabulary: seqio.Vocabulary | None = None,
) -> seqio.Task:
    """Register (or replace) a seqio Task of one split whose examples come from `pairs()`."""
    SOURCES[name] = TaskSource(split, pairs, eval_set, num_negatives)
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(functools.partial(_dataset_fn, name), splits=[split]),
        preprocessors=[features.tokenize],
        output_features=features.output_features(vocabulary or features.TokenizerVocabulary(), num_negatives > 0),
        metric_fns=[],
    )


def _source(name: str, split: str | None = None) -> TaskSource:
    if name not in SOURCES:
        raise UserError(f"unknown task {name!r}: not registered by gtr_jax (import tasks?)")
    source = SOURCES[name]
    if split is not None and split != source.split:
        raise UserError(f"task {name} has only the split {source.split!r}, not {split!r}")
    return source


def _dataset_fn(name: str, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    """Raw examples (texts and hashed ids) in source order; seqio shards and shuffles after."""
    del shuffle_files, seed  # one in-memory source: seqio's example shuffle is the only one
    source = _source(name, split)
    pairs = source.pairs()
    k = source.num_negatives
    signature = {
        "query": tf.TensorSpec((), tf.string),
        "doc": tf.TensorSpec((), tf.string),
        "query_id": tf.TensorSpec((), tf.int32),
        "doc_id": tf.TensorSpec((), tf.int32),
    }
    if k:
        signature.update(negatives=tf.TensorSpec((k,), tf.string), negative_ids=tf.TensorSpec((k,), tf.int32))

    def generate():
        for start in range(0, len(pairs), 1024):
            ex = pairs.examples(np.arange(start, min(start + 1024, len(pairs))))
            ids = {key: stable_ids(ex[key]) for key in ("query_id", "doc_id")}
            for i in range(len(ex["query"])):
                out = {"query": ex["query"][i], "doc": ex["doc"][i]}
                out.update(query_id=ids["query_id"][i], doc_id=ids["doc_id"][i])
                if k:
                    out.update(negatives=ex["negatives"][i], negative_ids=stable_ids(ex["negative_ids"][i]))
                yield out

    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def load_eval_set(task_name: str) -> EvalSet:
    """The queries, corpus and qrels of an evaluation task (msmarco_dev, multireqa_*_eval, beir_*, demo_*)."""
    source = _source(task_name)
    if source.eval_set is None:
        raise UserError(f"task {task_name} is a training task without an evaluation set")
    return source.eval_set()


@gin.configurable
def task_vocabulary_path(task_or_mixture_name: str) -> str:
    """The SentencePiece model a task (or every task of a mixture) tokenizes with."""
    paths = {t.output_features["query"].vocabulary.path for t in _tasks(task_or_mixture_name)[0]}
    if len(paths) != 1:
        raise UserError(f"{task_or_mixture_name}: its tasks use different vocabularies {sorted(paths)}")
    return paths.pop()


def _tasks(name: str) -> tuple[list[seqio.Task], np.ndarray]:
    """The tasks (sorted by name) and their normalized mixing rates."""
    try:
        provider = seqio.get_mixture_or_task(name)
    except ValueError:
        raise UserError(f"unknown task or mixture {name!r} (import tasks?)") from None
    if isinstance(provider, seqio.Mixture):
        tasks = sorted(provider.tasks, key=lambda t: t.name)
        rates = np.array([provider.get_rate(t) for t in tasks], np.float64)
    else:
        tasks, rates = [provider], np.ones(1)
    if rates.sum() <= 0:
        raise UserError(f"mixture {name}: its rates sum to {rates.sum()}")
    return tasks, rates / rates.sum()


class _Schedule:
    """Which positions of each task's example stream each global step takes."""

    def __init__(self, rates: np.ndarray, batch: int, seed: int, single_task_batches: bool):
        self.rates, self.batch, self.seed, self.single = rates, batch, seed, single_task_batches
        self._block_starts = [np.zeros(len(rates), np.int64)]  # stream position of each task per block
        self._last: tuple[int, np.ndarray] | None = None

    def _block(self, block: int) -> np.ndarray:
        """int64 [STEPS_PER_BLOCK, tasks]: examples of each task in each step of the block."""
        if self._last is None or self._last[0] != block:
            rng = np.random.default_rng([self.seed, 1, block])
            if len(self.rates) == 1:
                counts = np.full((STEPS_PER_BLOCK, 1), self.batch, np.int64)
            elif self.single:
                chosen = rng.choice(len(self.rates), size=STEPS_PER_BLOCK, p=self.rates)
                counts = np.eye(len(self.rates), dtype=np.int64)[chosen] * self.batch
            else:
                counts = rng.multinomial(self.batch, self.rates, size=STEPS_PER_BLOCK)
            self._last = (block, counts.astype(np.int64))
        return self._last[1]

    def step(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(first stream position, count) per task for a step."""
        block, offset = divmod(step, STEPS_PER_BLOCK)
        while len(self._block_starts) <= block:
            self._block_starts.append(self._block_starts[-1] + self._block(len(self._block_starts) - 1).sum(0))
        counts = self._block(block)
        return self._block_starts[block] + counts[:offset].sum(0), counts[offset]


class _Stream:
    """A task's examples as an endless sequence of epochs, each its own seeded permutation."""

    def __init__(self, size: int, seed: int, task_index: int, shuffle: bool):
        self.size, self.seed, self.task_index, self.shuffle = size, seed, task_index, shuffle
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # enough for a batch that crosses an epoch boundary
                del self._orders[min(self._orders)]
            rng = np.random.default_rng([self.seed, 2, self.task_index, epoch])
            self._orders[epoch] = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        return self._orders[epoch]

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Example index at each stream position."""
        epochs, offsets = np.divmod(positions, self.size)
        out = np.empty(len(positions), np.int64)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            out[at] = self._order(int(epoch))[offsets[at]]
        return out


@gin.configurable
def batch_iterator(
    task_or_mixture_name: str,
    *,
    split: str | None = None,
    global_batch_size: int,
    feature_lengths: dict[str, int] | None = None,
    seed: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    start_step: int = 0,
    shuffle: bool = True,
    single_task_batches: bool = False,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless per-host numpy batches of step start_step, start_step + 1, ... (see the module doc).

    Each batch has global_batch_size // num_shards rows: query_tokens, doc_tokens int32
    [b, L], query_ids, doc_ids int32 [b], and for tasks with hard negatives
    negative_tokens int32 [b, K, Ld] and negative_ids int32 [b, K]. feature_lengths
    defaults to {"query": 64, "doc": 256}. Batches are made `prefetch` steps ahead on a
    background thread.
    """
    if global_batch_size % num_shards:
        raise UserError(f"the batch size {global_batch_size} does not split over {num_shards} hosts")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} is not in [0, {num_shards})")
    lengths = {**features.DEFAULT_FEATURE_LENGTHS, **(feature_lengths or {})}
    tasks, rates = _tasks(task_or_mixture_name)
    sources = [_source(t.name, split) for t in tasks]
    if len({s.num_negatives for s in sources}) != 1:
        raise UserError(f"{task_or_mixture_name}: its tasks have different numbers of hard negatives")
    tokenizer = features.TokenizerVocabulary(task_vocabulary_path(task_or_mixture_name)).tokenizer
    pairs = [s.pairs() for s in sources]
    for task, task_pairs in zip(tasks, pairs):
        if not len(task_pairs):
            raise UserError(f"task {task.name} has no examples")
    streams = [_Stream(len(p), seed, i, shuffle) for i, p in enumerate(pairs)]
    schedule = _Schedule(rates, global_batch_size, seed, single_task_batches)
    local = global_batch_size // num_shards

    def make(step: int) -> dict[str, np.ndarray]:
        starts, counts = schedule.step(step)
        task_of = np.repeat(np.arange(len(tasks)), counts)
        row_of = np.concatenate([streams[t].rows(starts[t] + np.arange(counts[t])) for t in range(len(tasks))])
        if len(tasks) > 1:  # spread each task over the hosts' slices
            order = np.random.default_rng([seed, 3, step]).permutation(global_batch_size)
            task_of, row_of = task_of[order], row_of[order]
        mine = slice(shard_index * local, (shard_index + 1) * local)
        task_of, row_of = task_of[mine], row_of[mine]
        merged: dict[str, list] = {}
        position = np.empty(local, np.int64)
        filled = 0
        for t in np.unique(task_of):
            at = np.flatnonzero(task_of == t)
            for key, values in pairs[t].examples(row_of[at]).items():
                merged.setdefault(key, []).extend(values)
            position[filled : filled + len(at)] = at
            filled += len(at)
        batch = features.numpy_features(merged, tokenizer, lengths)
        inverse = np.argsort(position)  # back from grouped-by-task to the plan's order
        return {key: value[inverse] for key, value in batch.items()}

    return _prefetched(make, start_step, prefetch)


def _prefetched(make: Callable[[int], dict], start_step: int, depth: int):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(make, start_step + i) for i in range(max(depth, 1))]
        step = start_step + len(pending)
        try:
            while True:
                batch = pending.pop(0).result()
                pending.append(pool.submit(make, step))
                step += 1
                yield batch
        finally:
            for future in pending:
                future.cancel()

