"""The false-negative rules of mining: which candidates of a (query, positive) row may never be negatives.

Each candidate gets one code, from the first rule that applies, in this order:
  KNOWN_POSITIVE  it is one of the query's relevant documents: every qrel of the query with
                  relevance > 0, not only the row's positive;
  DUPLICATE_TEXT  its text equals the text of one of the query's relevant documents after
                  whitespace normalisation (`normalize`: runs of whitespace, Unicode's
                  included, become one space and the ends are stripped; case, punctuation
                  and everything else are compared as they are);
  SCORE_RATIO     (with a max_score_ratio) its score is above max_score_ratio × the score of
                  the row's positive under the same miner: positive-aware filtering, the
                  TopK-PercPos of NV-Retriever (Moreira et al., 2024);
else KEEP. PADDING marks the slots past the end of a candidate list. Everything is computed
over whole [rows, candidates] arrays.
"""

import numpy as np
import tqdm

from gtr_jax.data.examples import take

KEEP, KNOWN_POSITIVE, DUPLICATE_TEXT, SCORE_RATIO, PADDING = range(5)
RULES = {KNOWN_POSITIVE: "known_positive", DUPLICATE_TEXT: "duplicate_text", SCORE_RATIO: "score_ratio"}
CHUNK = 65536  # texts decoded and hashed at a time


def normalize(text: str) -> str:
    """Text with each run of whitespace made one space and no whitespace at either end."""
    return " ".join(text.split())


def text_groups(texts, progress: bool = False) -> np.ndarray:
    """int64 [n]: one group number per distinct normalized text (equal numbers ⇔ equal texts).

    Texts are grouped by a hash of their normalized form, then every group of several texts
    is checked text by text, so two different texts never share a number.
    """
    keys = np.empty(len(texts), np.int64)
    with tqdm.tqdm(total=len(texts), desc="hash passages", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), CHUNK):
            chunk = take(texts, range(start, min(start + CHUNK, len(texts))))
            keys[start : start + len(chunk)] = np.fromiter((hash(normalize(t)) for t in chunk), np.int64, len(chunk))
            bar.update(len(chunk))
    _, groups, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    groups = groups.reshape(-1).astype(np.int64)
    shared = np.flatnonzero(sizes[groups] > 1)
    if len(shared):
        # Texts that share a hash: the first text of a group keeps its number, any other text (a
        # hash collision) gets a new one.
        first: dict[int, str] = {}
        fresh: dict[tuple[int, str], int] = {}
        for row, text in zip(shared.tolist(), take(texts, shared)):
            group, text = int(groups[row]), normalize(text)
            if first.setdefault(group, text) != text:
                groups[row] = fresh.setdefault((group, text), len(sizes) + len(fresh))
    return groups


def _members(query_index: np.ndarray, values: np.ndarray, known_index: np.ndarray, known_values: np.ndarray,
             width: int) -> np.ndarray:
    """Whether each (query_index, value) is one of the pairs (known_index, known_values); values < width."""
    return np.isin(query_index * width + values, known_index * width + known_values)


def rule_codes(candidate_rows: np.ndarray, row_query: np.ndarray, positive_query: np.ndarray,
               positive_rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """int8 [n, k]: KEEP, KNOWN_POSITIVE, DUPLICATE_TEXT or PADDING of each candidate (score ratio aside).

    candidate_rows [n, k] are corpus rows (-1: padding) of n lists; row_query [n] names the
    query of each list and (positive_query, positive_rows) every relevant document of
    those queries, as (query, corpus row) pairs with the same query numbering.
    """
    valid = candidate_rows >= 0
    rows = np.where(valid, candidate_rows, 0)
    owner = np.broadcast_to(row_query[:, None], rows.shape)
    width = len(groups)
    known = _members(owner, rows, positive_query, positive_rows, width)
    duplicate = _members(owner, groups[rows], positive_query, groups[positive_rows], width)
    codes = np.full(rows.shape, KEEP, np.int8)
    codes[duplicate] = DUPLICATE_TEXT
    codes[known] = KNOWN_POSITIVE
    codes[~valid] = PADDING
    return codes


def apply_score_ratio(codes: np.ndarray, scores: np.ndarray, positive_scores: np.ndarray,
                      max_score_ratio: float | None) -> np.ndarray:
    """codes with SCORE_RATIO for kept candidates scoring above max_score_ratio × the row's positive score."""
    if max_score_ratio is None:
        return codes
    limit = max_score_ratio * positive_scores.astype(np.float64)[:, None]
    return np.where((codes == KEEP) & (scores.astype(np.float64) > limit), np.int8(SCORE_RATIO), codes)
