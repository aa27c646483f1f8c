"""BM25 over a corpus with bm25s: the lexical reference line of `gtr-jax evaluate --ranker=bm25`.

Settings (the module constants, passed to bm25s explicitly): bm25s's default BM25, Lucene's
variant (method "lucene": idf = ln(1 + (N - df + 0.5) / (df + 0.5)), term weight
tf / (tf + k1 (1 - b + b |d| / avgdl))) with k1 = 1.5 and b = 0.75, the defaults of
bm25s.BM25 in 0.3.16. Texts are tokenized as bm25s.tokenize does by default: lower-cased,
tokens of two or more word characters (r"(?u)\\b\\w\\w+\\b"), bm25s's English stopwords
(stopwords="en", NLTK's list) removed, then stemmed by PyStemmer's English (Snowball) stemmer.
Queries go through the same tokenizer; their terms absent from the corpus are dropped.

Ties: the corpus is indexed in descending id order (retrieval.trec_order), and bm25s's
top k (jax.lax.top_k, which puts the lower index first among equal scores) keeps that
order, so equal scores rank the higher id first, as trec_eval does. Documents that share
no term with a query score 0 and fill its top k in that order, as bm25s returns them.
"""

import dataclasses
import logging
from importlib import metadata

import bm25s
import numpy as np
import Stemmer

from gtr_jax.eval.retrieval import trec_order
from gtr_jax.data.examples import take

METHOD = "lucene"
K1 = 1.5
B = 0.75
LOWER = True
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
STOPWORDS = "en"
STEMMER = "english"

# bm25s sets its logger to DEBUG on import, which prints a line per index wherever logging has a handler.
logging.getLogger("bm25s").setLevel(logging.WARNING)


def settings() -> dict:
    """The BM25 settings and library versions, as recorded beside a run's metrics."""
    return {"library": f"bm25s {metadata.version('bm25s')}", "method": METHOD, "k1": K1, "b": B,
            "lower": LOWER, "token_pattern": TOKEN_PATTERN, "stopwords": STOPWORDS,
            "stemmer": f"PyStemmer {metadata.version('PyStemmer')} {STEMMER}"}


def tokenize(texts, progress: bool = False) -> bm25s.tokenization.Tokenized:
    """Texts as bm25s token ids and vocabulary, with the module's settings."""
    return bm25s.tokenize(list(texts), lower=LOWER, token_pattern=TOKEN_PATTERN, stopwords=STOPWORDS,
                          stemmer=Stemmer.Stemmer(STEMMER), show_progress=progress)


@dataclasses.dataclass
class Bm25Index:
    """A bm25s index of a corpus, its rows in descending document-id order."""

    doc_ids: np.ndarray  # str [num_docs]: the id of each index row
    retriever: bm25s.BM25

    @classmethod
    def build(cls, doc_ids, doc_texts, progress: bool = False) -> "Bm25Index":
        """Index the corpus whose document doc_ids[i] has the text doc_texts[i]."""
        doc_ids = list(doc_ids)
        if len(doc_ids) != len(doc_texts):
            raise ValueError(f"{len(doc_ids)} document ids for {len(doc_texts)} texts")
        order = trec_order(doc_ids)
        retriever = bm25s.BM25(method=METHOD, k1=K1, b=B)
        retriever.index(tokenize(take(doc_texts, order), progress), show_progress=progress)
        return cls(np.asarray(doc_ids)[order], retriever)

    def search(self, query_texts, k: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(doc ids str [n, k], scores float32 [n, k]): each query's top k, best first.

        Columns past the corpus size are padding: "" ids and -inf scores.
        """
        query_texts = list(query_texts)
        doc_ids = np.full((len(query_texts), k), "", self.doc_ids.dtype)
        scores = np.full((len(query_texts), k), -np.inf, np.float32)
        found = min(k, len(self.doc_ids))
        if query_texts and found:
            # The jax selection is the one whose tie order is defined (see the module doc).
            rows, top = self.retriever.retrieve(tokenize(query_texts, progress), k=found, backend_selection="jax",
                                                show_progress=progress)
            doc_ids[:, :found], scores[:, :found] = self.doc_ids[rows], top
        return doc_ids, scores
