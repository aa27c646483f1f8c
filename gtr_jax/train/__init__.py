"""Training: the optimizer (optim), the jitted step (train_step), the loop that drives it
(trainer), how arrays are laid out on the device mesh (partitioning), checkpoints (with
abandoned_reads, which quiets a failed orbax read), and the host allocator policy the CLI
applies before JAX starts (host_memory)."""
