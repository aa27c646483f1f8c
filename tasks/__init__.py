"""Registers every gtr_jax seqio task and mixture: `import tasks` (gin: `import tasks`)."""

from tasks import beir, demo, msmarco, multireqa  # noqa: F401
