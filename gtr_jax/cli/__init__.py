"""The `gtr-jax` command line: one module per command, gin flags (gin_flags) and quiet start-up (startup)."""
