"""gtr_jax: GTR-style T5 dual-encoder retrievers trained with the SamToNe loss."""
