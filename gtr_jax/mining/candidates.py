"""Candidate lists for mining: each query's corpus documents ranked by BM25 or by a model, best first.

A miner ranks corpus rows (positions in the EvalSet's `doc_ids`). `candidates(query_rows, k)`
returns (rows int64 [n, k], -1 past the end of a list; scores float32 [n, k], -inf there;
complete bool [n]: the row holds every candidate the miner has for that query), and
`pair_scores(query_rows, doc_rows)` the score of given (query, document) pairs under the same
miner. Lists for a larger k extend those for a smaller one. Both miners work on the corpus in
descending document-id order (`retrieval.trec_order`) and rank equal scores by that order,
so ties go to the higher id, as in `gtr-jax evaluate`. `collective` says whether
`candidates` is a collective of every process (then all must call it with the same queries).

BM25 (`Bm25Miner`): bm25s's index with gtr_jax.eval.bm25's settings (Lucene BM25, k1 1.5,
b 0.75; bm25s's tokenizer, English stopwords and PyStemmer's English stemmer), built from
the corpus tokenized one chunk at a time into one flat int32 array, so that neither the
texts nor per-document token lists of the whole corpus are held at once. Scores are bm25s's
own float32 sums, term by term in the query's order, as `bm25s.BM25.retrieve` adds them;
but a query's top k is selected among the documents its terms' posting lists reach (the
documents that share a term with it: BM25's candidates; nothing else scores above 0),
which costs O(those postings) instead of retrieve's O(corpus) per query. The ranking is
retrieve's, ties included (tests/test_mining.py checks it against retrieve).

Model (`ModelMiner`): queries embedded with the query tower and the corpus with the
document tower (`encoding.TextEncoder`, sharded over the mesh), then the exact sharded top k
of `retrieval.search`, which splits the corpus over every device of every process: a
collective, whose result every process holds.
"""

import collections.abc
import itertools

import bm25s
import numpy as np
import tqdm

from gtr_jax.data.examples import EvalSet, take
from gtr_jax.errors import UserError
from gtr_jax.eval import bm25, retrieval
from gtr_jax.eval.encoding import TextEncoder

TOKENIZE_CHUNK = 65536  # texts tokenized at a time
QUERY_BATCH = 1024  # queries searched at a time


class _TokenLists(collections.abc.Sequence):
    """Documents' token-id lists held as one flat array and offsets: what bm25s's indexer iterates."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> list[int]:
        return self.flat[self.offsets[index] : self.offsets[index + 1]].tolist()

    def __iter__(self):
        bounds = self.offsets.tolist()
        for start, stop in zip(bounds[:-1], bounds[1:]):
            yield self.flat[start:stop].tolist()


def _tokenize(count: int, texts_at, vocab: dict[str, int], grow: bool, progress: bool,
              what: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat term ids int32, offsets int64 [count + 1]) of `count` texts, `texts_at(start, stop)` a slice of them.

    Terms are numbered by `vocab` (term -> id); with `grow`, new terms are added to it,
    otherwise they are dropped, as bm25s drops a query's terms the index does not know.
    """
    parts, lengths = [], []
    with tqdm.tqdm(total=count, desc=f"tokenize {what}", unit="text", disable=not progress) as bar:
        for start in range(0, count, TOKENIZE_CHUNK):
            tokenized = bm25.tokenize(texts_at(start, min(start + TOKENIZE_CHUNK, count)))
            local = np.full(len(tokenized.vocab), -1, np.int64)
            for term, i in tokenized.vocab.items():
                local[i] = vocab.setdefault(term, len(vocab)) if grow else vocab.get(term, -1)
            sizes = np.fromiter(map(len, tokenized.ids), np.int64, len(tokenized.ids))
            ids = local[np.fromiter(itertools.chain.from_iterable(tokenized.ids), np.int64, int(sizes.sum()))]
            keep = ids >= 0
            parts.append(ids[keep].astype(np.int32))
            lengths.append(np.bincount(np.repeat(np.arange(len(sizes)), sizes)[keep], minlength=len(sizes)))
            bar.update(len(sizes))
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    return flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


class Bm25Miner:
    """BM25 candidates over a corpus (see the module doc); `index` is the bm25s index, rows in `order`."""

    collective = False

    def __init__(self, eval_set: EvalSet, progress: bool = False):
        self.order = retrieval.trec_order(eval_set.doc_ids)  # index row -> corpus row
        self.num_docs = len(self.order)
        vocab: dict[str, int] = {}
        flat, offsets = _tokenize(self.num_docs, lambda start, stop: take(eval_set.doc_texts, self.order[start:stop]),
                                  vocab, True, progress, "passages")
        if not vocab:
            raise UserError("BM25: no passage has a term to index (every text is empty or stopwords)")
        self.index = bm25s.BM25(method=bm25.METHOD, k1=bm25.K1, b=bm25.B)
        self.index.scores = self.index.build_index_from_ids(list(vocab.values()), _TokenLists(flat, offsets),
                                                            show_progress=progress)
        del flat, offsets
        # What bm25s.BM25.index sets after building, so that the index also answers retrieve().
        vocab.setdefault("", max(vocab.values()) + 1)
        self.index.vocab_dict, self.index.unique_token_ids_set = vocab, set(vocab.values())
        queries = eval_set.query_texts
        self._query_flat, self._query_offsets = _tokenize(len(queries), lambda start, stop: take(queries, range(start, stop)),
                                                          vocab, False, progress, "queries")
        self._data, self._indices = self.index.scores["data"], self.index.scores["indices"]
        self._indptr = np.asarray(self.index.scores["indptr"], np.int64)
        self._scores = np.zeros(self.num_docs, np.float32)  # all zero between queries

    def query_terms(self, query_row: int) -> np.ndarray:
        """The index's term ids of a query, in its order (repeats kept, unknown terms dropped)."""
        return self._query_flat[self._query_offsets[query_row] : self._query_offsets[query_row + 1]]

    def _matched(self, query_row: int) -> tuple[np.ndarray, np.ndarray]:
        """(index rows, scores) of the documents sharing a term with the query, in no particular order."""
        scores, found = self._scores, []
        for term in self.query_terms(query_row).tolist():
            start, stop = self._indptr[term], self._indptr[term + 1]
            docs = self._indices[start:stop]
            found.append(docs[scores[docs] == 0])  # every score is > 0 once a term matched
            scores[docs] += self._data[start:stop]  # a posting list names each document once
        rows = np.concatenate(found) if found else np.zeros(0, np.int64)
        matched = scores[rows]
        scores[rows] = 0
        return rows, matched

    def candidates(self, query_rows, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(corpus rows, scores, complete) of each query's top k; see the module doc."""
        query_rows = np.asarray(query_rows, np.int64)
        rows = np.full((len(query_rows), k), -1, np.int64)
        scores = np.full((len(query_rows), k), -np.inf, np.float32)
        complete = np.zeros(len(query_rows), bool)
        for i, query_row in enumerate(query_rows.tolist()):
            found, matched = self._matched(query_row)
            complete[i] = len(found) <= k
            if not complete[i]:
                kth = np.partition(matched, len(matched) - k)[len(matched) - k]
                keep = matched >= kth  # the top k, and any further ties of the k-th score
                found, matched = found[keep], matched[keep]
            best = np.lexsort((found, -matched))[:k]  # equal scores: lower index row (higher id) first
            rows[i, : len(best)], scores[i, : len(best)] = self.order[found[best]], matched[best]
        return rows, scores, complete

    def pair_scores(self, query_rows, doc_rows) -> np.ndarray:
        """float32 BM25 score of each (query, corpus row) pair, added up as bm25s does (0 if no term matches)."""
        query_rows, doc_rows = np.asarray(query_rows, np.int64), np.asarray(doc_rows, np.int64)
        index_rows = np.empty(self.num_docs, np.int64)
        index_rows[self.order] = np.arange(self.num_docs)
        targets, last = index_rows[doc_rows], len(self._indices) - 1
        starts, stops = self._query_offsets[query_rows], self._query_offsets[query_rows + 1]
        total = np.zeros(len(query_rows), np.float32)
        for j in range(int((stops - starts).max(initial=0))):  # the j-th term of every query, in query order
            has = starts + j < stops
            terms = self._query_flat[np.where(has, starts + j, 0)]
            low = self._indptr[terms]
            end = high = np.where(has, self._indptr[terms + 1], low)
            # Lower bound of each target in its term's posting list (sorted by index row).
            while np.any(active := low < high):
                middle = (low + high) // 2
                before = active & (self._indices[np.minimum(middle, last)] < targets)
                low, high = np.where(before, middle + 1, low), np.where(active & ~before, middle, high)
            hit = (low < end) & (self._indices[np.minimum(low, last)] == targets)
            total += np.where(hit, self._data[np.minimum(low, last)], np.float32(0))
        return total


class ModelMiner:
    """Model candidates: exact sharded top k of query embeddings over corpus embeddings (see the module doc).

    `corpus` is the document embeddings in `order` (descending id): one array or a list of
    row blocks (memory-mapped shards); `queries` the query embeddings in query-row order.
    """

    collective = True

    def __init__(self, order: np.ndarray, queries: np.ndarray, corpus, mesh=None):
        self.order, self.queries, self.mesh = np.asarray(order, np.int64), queries, mesh
        self.blocks = [corpus] if isinstance(corpus, np.ndarray) else list(corpus)
        self.num_docs = len(self.order)

    @classmethod
    def encode(cls, eval_set: EvalSet, encoder: TextEncoder, *, batch_size: int = 64, embeddings_dir: str | None = None,
               fingerprint: dict | None = None, progress: bool = False) -> "ModelMiner":
        """Embed an eval set's corpus and queries; corpus shards go to `embeddings_dir` (resumable) if given."""
        order = retrieval.trec_order(eval_set.doc_ids)
        config = encoder.model_config
        if embeddings_dir:
            corpus = encoder.embed_to_shards(eval_set.doc_texts, "doc", config.max_length("doc"), embeddings_dir,
                                             order=order, batch_size=batch_size, fingerprint=fingerprint,
                                             progress=progress)
        else:
            corpus = encoder.embed(take(eval_set.doc_texts, order), "doc", config.max_length("doc"), batch_size,
                                   progress)
        queries = encoder.embed(eval_set.query_texts, "query", config.max_length("query"), batch_size, progress)
        return cls(order, queries, corpus, encoder.mesh)

    def candidates(self, query_rows, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(corpus rows, scores, complete) of each query's top k; a collective of every process."""
        query_rows = np.asarray(query_rows, np.int64)
        found = min(k, self.num_docs)
        rows = np.full((len(query_rows), k), -1, np.int64)
        scores = np.full((len(query_rows), k), -np.inf, np.float32)
        # Fewer than a search batch of queries are padded to a power of two: few shapes to compile.
        padded = max(len(query_rows), min(1 << (len(query_rows) - 1).bit_length(), QUERY_BATCH))
        asked = np.resize(query_rows, padded)
        top, positions = retrieval.search(self.queries[asked], self.blocks, found, mesh=self.mesh,
                                          query_batch_size=QUERY_BATCH)
        rows[:, :found], scores[:, :found] = self.order[positions[: len(query_rows)]], top[: len(query_rows)]
        return rows, scores, np.full(len(query_rows), k >= self.num_docs)

    def pair_scores(self, query_rows, doc_rows) -> np.ndarray:
        """float32 dot product (computed in float64) of each (query, corpus row) pair's embeddings."""
        positions = np.empty(self.num_docs, np.int64)
        positions[self.order] = np.arange(self.num_docs)
        docs = _gather(self.blocks, positions[np.asarray(doc_rows, np.int64)])
        queries = np.asarray(self.queries[np.asarray(query_rows, np.int64)], np.float64)
        return np.einsum("nd,nd->n", queries, docs.astype(np.float64)).astype(np.float32)


def _gather(blocks: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
    """Rows at `positions` of the blocks read as one array (memory-mapped blocks are read row by row)."""
    bounds = np.cumsum([0] + [len(b) for b in blocks])
    out = np.empty((len(positions), blocks[0].shape[1]), np.float32)
    block_of = np.searchsorted(bounds, positions, side="right") - 1
    for number, block in enumerate(blocks):
        mine = np.flatnonzero(block_of == number)
        if len(mine):
            out[mine] = block[positions[mine] - bounds[number]]
    return out

