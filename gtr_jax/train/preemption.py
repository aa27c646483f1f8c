"""Preemption notices: Cloud TPU spot and preemptible VMs, and maintenance events, send SIGTERM.

The trainer asks `Preemption.reached(step)` after every step; when it answers True, the
trainer checkpoints that step on every host, waits for the save and returns, so the
command exits 0 and the same command resumes. The data order and dropout are functions
of (seed, step), so the resumed run ends bit-equal to one that was never stopped.

With several processes, JAX's distributed service receives the notice and its
preemption sync manager picks one step at which every host stops (orbax's
`reached_preemption`, i.e. `multihost_utils.reached_preemption_sync_point`). A single
process has no host to agree with: a SIGTERM handler records the notice, and the
process stops after the step it is in.
"""

import signal
import threading

import jax
import orbax.checkpoint as ocp


class Preemption:
    """A context manager that watches for a preemption notice while training runs."""

    def __init__(self, manager: ocp.CheckpointManager):
        self._manager = manager
        self._signalled = threading.Event()
        self._previous_handler = None

    def __enter__(self):
        # Python can install signal handlers only from the main thread; with several processes
        # JAX's own preemption notifier owns SIGTERM.
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: self._signalled.set())
        return self

    def __exit__(self, *exc):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        return False

    def reached(self, step: int) -> bool:
        """Whether to checkpoint `step` (the number of steps done) and stop. Call at every step."""
        return self._manager.reached_preemption(step) or self._signalled.is_set()
