"""A gin-configurable wrapper that slows any input pipeline, so a test can stop a run between checkpoints."""

import time

import gin


@gin.configurable
def slowed_input(*, input_fn=gin.REQUIRED, step_delay: float = 0.15, **kwargs):
    """The batches of `input_fn(**kwargs)`, each `step_delay` seconds late."""
    for batch in input_fn(**kwargs):
        time.sleep(step_delay)
        yield batch
