"""A synthetic BEIR-format folder at any scale, for timing `gtr-jax mine` (README § Hard negatives).

Words are random lower-case strings drawn by a Zipf law (exponent 1) over a 100,000-word
vocabulary, without its 150 most frequent ranks: the stopwords that BM25's tokenizer
removes from real text, so that posting lists are as long as a real corpus's content
words'. A passage has 25 to 40 such words (MS MARCO's passages: 56 words, 30 or so after
stopwords). Each of `--queries` queries is about a distinct random passage, its one
relevant document (qrels/train.tsv): 3 words of the passage and 1 random word.

    python bench/mining_corpus.py --passages=1000000 --queries=20000 --output=/tmp/synthetic_1m
    gtr-jax mine --beir_dir=/tmp/synthetic_1m --miner=bm25 --output=/tmp/synthetic_1m/bm25.jsonl
"""

import argparse
import json
import os

import numpy as np

VOCABULARY, STOPWORD_RANKS = 100_000, 150


def main():
    """Write corpus.jsonl, queries.jsonl and qrels/train.tsv."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, required=True)
    parser.add_argument("--queries", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
    lengths = rng.integers(3, 11, VOCABULARY)
    words = [bytes(rng.choice(letters, n)).decode() for n in lengths]
    ranks = np.arange(STOPWORD_RANKS + 1, STOPWORD_RANKS + VOCABULARY + 1, dtype=np.float64)
    probabilities = 1 / ranks / (1 / ranks).sum()
    os.makedirs(os.path.join(args.output, "qrels"), exist_ok=True)
    sizes = rng.integers(25, 41, args.passages)
    asked = np.sort(rng.choice(args.passages, args.queries, replace=False))
    with open(os.path.join(args.output, "corpus.jsonl"), "w") as corpus, \
            open(os.path.join(args.output, "queries.jsonl"), "w") as queries, \
            open(os.path.join(args.output, "qrels", "train.tsv"), "w") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        asked_at = 0
        for start in range(0, args.passages, 100_000):
            block = sizes[start : start + 100_000]
            drawn = rng.choice(VOCABULARY, int(block.sum()), p=probabilities)
            bounds = np.r_[0, np.cumsum(block)]
            for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
                passage = start + i
                corpus.write(json.dumps({"_id": f"p{passage}", "title": "", "text": " ".join(words[w] for w in drawn[a:b])})
                             + "\n")
                if asked_at < len(asked) and asked[asked_at] == passage:
                    terms = [*rng.choice(drawn[a:b], 3, replace=False), rng.choice(VOCABULARY, p=probabilities)]
                    queries.write(json.dumps({"_id": f"q{passage}", "text": " ".join(words[w] for w in terms)}) + "\n")
                    qrels.write(f"q{passage}\tp{passage}\t1\n")
                    asked_at += 1


if __name__ == "__main__":
    main()
