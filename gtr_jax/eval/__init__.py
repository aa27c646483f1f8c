"""Evaluation: text to embeddings (encoding), exact sharded top-k (retrieval), BM25 (bm25),
trec_eval measures (metrics), the evaluation runs of `gtr-jax evaluate` and of training
(evaluation), and embedding-space analysis (analysis)."""
