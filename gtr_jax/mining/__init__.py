"""Hard-negative mining (`gtr-jax mine`): candidate lists, false-negative filters, sampling and summary."""
