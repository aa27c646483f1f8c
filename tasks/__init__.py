"""Registers every gtr_jax seqio task and mixture: `import tasks` (gin: `import tasks`)."""

from tasks import beir, demo, jsonl_pairs, mined_negatives, msmarco, multireqa  # noqa: F401
