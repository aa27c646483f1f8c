"""Mining hard negatives: one row of negatives per (query, relevant document) pair of an eval set.

For each row (a query and one of its documents with relevance > 0, in query then qrels
order) the miner's candidates for the query, best first, go through the false-negative
rules (filters.py); the candidates left are ranked 1, 2, ... in the miner's order, and
`num_negatives` of those ranked rank_low..rank_high (1-based, both included) are drawn
uniformly without replacement, then written in rank order. Fewer are left when fewer
remain. The draw is a pure function of (seed, query id, positive id, rank): it does not
depend on how many candidates were fetched, how queries were chunked, or how many
processes mined.

Candidates are fetched per chunk of queries, rank_high plus the most relevant documents of
a query in the chunk (plus a margin) at first; a row that has not reached rank_high kept
candidates fetches its query again with twice as many, until it has, or its query has no
more candidates, or `max_depth` were looked at (the row is then "depth limited").

Counts (summary): a row "considers" its candidates up to the one ranked rank_high (all it
got if it has fewer); each considered candidate that a rule drops is counted under that rule.

With several processes, a collective miner (the model's sharded search) is run by every
process on every chunk, and every process computes the same rows; otherwise (BM25) process
p mines chunks p, p + P, ..., and the rows are all-gathered. Either way the result equals a
one-process run's.
"""

import dataclasses
import hashlib
import json
import os
import time

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from gtr_jax.data.examples import EvalSet, take
from gtr_jax.data.negatives_file import MinedNegatives
from gtr_jax.errors import UserError
from gtr_jax.mining import filters

MARGIN = 16  # extra candidates fetched at first, for duplicates and ratio drops
COUNTS = ("considered", *filters.RULES.values(), "depth_limited")


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """What to mine: see the module doc."""

    num_negatives: int = 8
    rank_low: int = 1
    rank_high: int = 100
    max_score_ratio: float | None = None
    seed: int = 0
    max_depth: int = 10000
    query_chunk: int = 16384

    def __post_init__(self):
        if self.num_negatives < 1:
            raise UserError(f"--num_negatives must be at least 1, not {self.num_negatives}")
        if not 1 <= self.rank_low <= self.rank_high:
            raise UserError(f"--rank_range {self.rank_low}:{self.rank_high}: need 1 <= LO <= HI")
        if self.max_depth < self.rank_high:
            raise UserError(f"--max_depth {self.max_depth} is below the rank range's end {self.rank_high}")
        if self.max_score_ratio is not None and not 0 < self.max_score_ratio < float("inf"):
            raise UserError(f"--max_score_ratio must be a positive number, not {self.max_score_ratio}")
        if self.query_chunk < 1:
            raise UserError(f"query_chunk must be at least 1, not {self.query_chunk}")


def parse_rank_range(text: str) -> tuple[int, int]:
    """(LO, HI) of "LO:HI"; a malformed range is a UserError."""
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise UserError(f"--rank_range {text!r}: expected LO:HI, two integers such as 1:100") from None


@dataclasses.dataclass
class Rows:
    """The rows to mine: row i is (query query_rows[i], its relevant corpus row positive_rows[i])."""

    query_rows: np.ndarray
    positive_rows: np.ndarray

    @classmethod
    def of(cls, eval_set: EvalSet) -> "Rows":
        """Every (query, document with relevance > 0) of the eval set, in query then qrels order."""
        doc_row = {doc_id: row for row, doc_id in enumerate(eval_set.doc_ids)}
        query_rows, positive_rows = [], []
        for row, query_id in enumerate(eval_set.query_ids):
            for doc_id, relevance in eval_set.qrels.get(query_id, {}).items():
                if relevance > 0:
                    if doc_id not in doc_row:
                        raise UserError(f"qrels: query {query_id} names document {doc_id}, which is not in the corpus")
                    query_rows.append(row)
                    positive_rows.append(doc_row[doc_id])
        if not query_rows:
            raise UserError("no query has a relevant document: nothing to mine")
        return cls(np.asarray(query_rows, np.int64), np.asarray(positive_rows, np.int64))


def _row_seeds(seed: int, query_ids: list[str], positive_ids: list[str]) -> np.ndarray:
    """uint64 [n]: each row's sampling seed, from (seed, query id, positive id)."""
    digests = (hashlib.blake2b(f"{seed}\t{q}\t{p}".encode(), digest_size=8).digest()
               for q, p in zip(query_ids, positive_ids))
    return np.frombuffer(b"".join(digests), np.uint64).copy() if query_ids else np.zeros(0, np.uint64)


def _mix(seeds: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """uint64 hash of (seed, rank) per element (splitmix64's finalizer): the sampling keys."""
    x = seeds + ranks.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _finish(codes: np.ndarray, rows: np.ndarray, seeds: np.ndarray, limited: np.ndarray,
            config: MiningConfig) -> tuple[np.ndarray, np.ndarray]:
    """(negatives int32 [n, num_negatives], corpus rows or -1; counts int32 [n, len(COUNTS)]) of finished rows."""
    kept = codes == filters.KEEP
    rank = np.cumsum(kept, axis=1)  # at a kept candidate: its rank among the kept ones
    considered = (codes != filters.PADDING) & (rank - kept < config.rank_high)
    counts = [considered.sum(1)] + [(considered & (codes == code)).sum(1) for code in filters.RULES] + [limited]
    eligible = kept & (rank >= config.rank_low) & (rank <= config.rank_high)
    with np.errstate(over="ignore"):
        keys = np.where(eligible, _mix(seeds[:, None], rank), np.uint64(np.iinfo(np.uint64).max))
    picked = np.argsort(keys, axis=1, kind="stable")[:, : config.num_negatives]
    width = codes.shape[1]
    # Candidate positions are in rank order: sorting the picked positions sorts them by rank.
    picked = np.sort(np.where(np.take_along_axis(eligible, picked, 1), picked, width), axis=1)
    negatives = np.where(picked < width, np.take_along_axis(rows, np.minimum(picked, width - 1), 1), -1)
    if negatives.shape[1] < config.num_negatives:
        negatives = np.pad(negatives, ((0, 0), (0, config.num_negatives - negatives.shape[1])), constant_values=-1)
    return negatives.astype(np.int32), np.stack(counts, 1).astype(np.int32)


def _mine_chunk(miner, eval_set: EvalSet, rows: Rows, chunk: np.ndarray, groups: np.ndarray,
                config: MiningConfig) -> tuple[np.ndarray, np.ndarray]:
    """(negatives, counts) of the rows `chunk` (indices into `rows`; every row of their queries)."""
    query_of = rows.query_rows[chunk]
    queries, row_query = np.unique(query_of, return_inverse=True)
    positives = rows.positive_rows[chunk]
    seeds = _row_seeds(config.seed, take(eval_set.query_ids, query_of), take(eval_set.doc_ids, positives))
    positive_scores = (miner.pair_scores(query_of, positives) if config.max_score_ratio is not None
                       else np.zeros(len(chunk), np.float32))
    depth = min(config.max_depth, miner.num_docs)
    k = min(config.rank_high + int(np.bincount(row_query).max()) + MARGIN, depth)
    negatives = np.empty((len(chunk), config.num_negatives), np.int32)
    counts = np.empty((len(chunk), len(COUNTS)), np.int32)
    pending = np.arange(len(chunk))
    while len(pending):
        asked, asked_index = np.unique(row_query[pending], return_inverse=True)
        candidate_rows, scores, complete = miner.candidates(queries[asked], k)
        candidate_rows, scores = candidate_rows[asked_index], scores[asked_index]
        codes = filters.rule_codes(candidate_rows, row_query[pending], row_query, positives, groups)
        codes = filters.apply_score_ratio(codes, scores, positive_scores[pending], config.max_score_ratio)
        enough = (codes == filters.KEEP).sum(1) >= config.rank_high
        done = enough | complete[asked_index] | (k >= depth)
        finished = pending[done]
        limited = ~enough[done] & ~complete[asked_index][done]
        negatives[finished], counts[finished] = _finish(codes[done], candidate_rows[done], seeds[finished],
                                                        limited, config)
        pending, k = pending[~done], min(2 * k, depth)
    return negatives, counts


def _chunks(rows: Rows, query_chunk: int) -> list[np.ndarray]:
    """Row indices split into chunks of about `query_chunk` queries, never splitting a query's rows."""
    starts = np.flatnonzero(np.r_[True, rows.query_rows[1:] != rows.query_rows[:-1]])
    bounds = np.r_[starts[::query_chunk], len(rows.query_rows)]
    return [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _all_gather(local: dict[int, tuple[np.ndarray, np.ndarray]], chunks: list[np.ndarray], processes: int,
                num_negatives: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{chunk: (negatives, counts)} of every chunk, from each process's own chunks (p, p + P, ...)."""
    owned = [[c for c in range(len(chunks)) if c % processes == p] for p in range(processes)]
    sizes = [sum(len(chunks[c]) for c in owned_by) for owned_by in owned]
    # Every process sends the same shape: its rows, then padding up to the largest share.
    packed = np.zeros((max(sizes), num_negatives + len(COUNTS)), np.int32)
    if local:
        packed[: sizes[jax.process_index()]] = np.concatenate([np.concatenate(local[c], 1) for c in sorted(local)])
    gathered = np.asarray(multihost_utils.process_allgather(packed))
    result = {}
    for process, owned_by in enumerate(owned):
        bounds = np.cumsum([0] + [len(chunks[c]) for c in owned_by])
        for c, start, stop in zip(owned_by, bounds[:-1], bounds[1:]):
            result[c] = (gathered[process, start:stop, :num_negatives], gathered[process, start:stop, num_negatives:])
    return result


def mine(eval_set: EvalSet, miner, config: MiningConfig, progress: bool = False) -> tuple[MinedNegatives, dict]:
    """The negatives of every (query, relevant document) row, and the mining's counts and seconds."""
    started = time.perf_counter()
    rows = Rows.of(eval_set)
    groups = filters.text_groups(eval_set.doc_texts, progress)
    chunks = _chunks(rows, config.query_chunk)
    processes = 1 if miner.collective else jax.process_count()
    own = [c for c in range(len(chunks)) if c % processes == jax.process_index() % processes]
    results = {}
    with tqdm.tqdm(total=sum(len(chunks[c]) for c in own), desc="mine", unit="row", disable=not progress) as bar:
        for c in own:
            results[c] = _mine_chunk(miner, eval_set, rows, chunks[c], groups, config)
            bar.update(len(chunks[c]))
    if processes > 1:
        results = _all_gather(results, chunks, processes, config.num_negatives)
    negatives = np.concatenate([results[c][0] for c in range(len(chunks))])
    counts = np.concatenate([results[c][1] for c in range(len(chunks))])
    doc_ids = eval_set.doc_ids
    mined = MinedNegatives(
        query_ids=take(eval_set.query_ids, rows.query_rows),
        positive_ids=take(doc_ids, rows.positive_rows),
        negative_ids=_ids_by_row(doc_ids, negatives),
    )
    return mined, _summary(rows, negatives, counts, config, time.perf_counter() - started)


def _ids_by_row(doc_ids, negatives: np.ndarray) -> list[list[str]]:
    """Each row's negative ids (its -1 padding left out)."""
    valid = negatives >= 0
    ids = take(doc_ids, negatives[valid])
    bounds = np.r_[0, np.cumsum(valid.sum(1))].tolist()
    return [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _summary(rows: Rows, negatives: np.ndarray, counts: np.ndarray, config: MiningConfig, seconds: float) -> dict:
    """The counts of the module doc, per row and per query."""
    found = (negatives >= 0).sum(1)
    totals = dict(zip(COUNTS, counts.sum(0).tolist()))

    def queries_where(mask: np.ndarray) -> int:
        return len(np.unique(rows.query_rows[mask]))

    return {
        "rows": len(found),
        "queries": queries_where(np.ones(len(found), bool)),
        "num_negatives": config.num_negatives,
        "rank_range": [config.rank_low, config.rank_high],
        "max_score_ratio": config.max_score_ratio,
        "seed": config.seed,
        "max_depth": config.max_depth,
        "candidates_considered": totals["considered"],
        "dropped": {name: totals[name] for name in filters.RULES.values()},
        "negatives": int(found.sum()),
        "rows_with_fewer": int((found < config.num_negatives).sum()),
        "rows_with_none": int((found == 0).sum()),
        "queries_with_fewer": queries_where(found < config.num_negatives),
        "queries_with_none": queries_where(found == 0),
        "rows_depth_limited": totals["depth_limited"],
        "mining_seconds": round(seconds, 3),
    }


def describe(summary: dict) -> str:
    """The summary as the lines `gtr-jax mine` prints."""
    dropped = summary["dropped"]
    low, high = summary["rank_range"]
    ratio = summary["max_score_ratio"]
    seconds = summary["seconds"]
    return "\n".join([
        f"mined {summary['rows']:,} rows ({summary['queries']:,} queries) over {summary['documents']:,} passages "
        f"with {summary['miner']['name']}: up to {summary['num_negatives']} negatives from ranks {low}-{high}",
        f"candidates considered {summary['candidates_considered']:,}; dropped: known positive "
        f"{dropped['known_positive']:,}, duplicate text of a positive {dropped['duplicate_text']:,}, score above "
        + (f"{ratio} x the positive's {dropped['score_ratio']:,}" if ratio is not None else "a ratio: off"),
        f"rows with fewer than {summary['num_negatives']} negatives: {summary['rows_with_fewer']:,} "
        f"({summary['rows_with_none']:,} with none; queries: {summary['queries_with_fewer']:,}, "
        f"{summary['queries_with_none']:,} with none); depth limited: {summary['rows_depth_limited']:,}",
        f"time {seconds['total']:.1f} s (load {seconds['load']:.1f}, index {seconds['index']:.1f}, "
        f"mine {seconds['mine']:.1f}): {summary['passages_per_second']:,.0f} passages/s indexed and mined, "
        f"peak memory {summary['peak_rss_gib']:.2f} GiB",
    ])


def write_summary(path: str, summary: dict) -> None:
    """Write the summary as JSON, atomically (a temporary file renamed over `path`)."""
    partial = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.partial")
    with open(partial, "w", encoding="utf-8") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
    os.replace(partial, path)
