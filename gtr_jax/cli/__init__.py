"""The `gtr-jax` command line: one module per command, gin flag handling in one place."""
