"""Quiet the shard reads that a failed orbax restore leaves running.

Orbax (0.12, asyncio_utils) runs a restore's reads on an event loop that it closes as soon
as one read fails, without cancelling the others. Whenever an abandoned read ends or is
garbage collected (seconds later, at any point of the run) it reports again, each time
with a TensorStore dump of dozens of lines:
  * through asyncio's logger: "Task/Future exception was never retrieved", "Task was
    destroyed but it is pending!";
  * as an unraisable exception: the read's error, or "Event loop is closed";
  * as a RuntimeWarning, if it never started: "coroutine ... was never awaited".
The damage behind them is already reported, in one line, by whoever caught the failed
restore. `silence(checkpoint_dir)` drops exactly those reports for the rest of the process,
recognised by orbax's read coroutine or error, or by the damaged checkpoint's path, and
passes every other report on.
"""

import logging
import sys
import warnings

_READ_COROUTINE = "_read_array_index_and_device_put"
_READ_ERROR = "Encountered error while reading array index"  # orbax's wording (serialization.py)
_damaged_dirs: set[str] = set()


def silence(checkpoint_dir: str):
    """Drop the later reports of reads abandoned by a failed restore of `checkpoint_dir`."""
    _damaged_dirs.add(str(checkpoint_dir).rstrip("/"))
    warnings.filterwarnings("ignore", f"coroutine '{_READ_COROUTINE}' was never awaited", RuntimeWarning)
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedReadRecords) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_AbandonedReadRecords())
    if not getattr(sys.unraisablehook, "drops_abandoned_reads", False):
        sys.unraisablehook = _unraisable_hook_over(sys.unraisablehook)


def _about_abandoned_read(text: str) -> bool:
    return _READ_COROUTINE in text or _READ_ERROR in text or any(d in text for d in _damaged_dirs)


class _AbandonedReadRecords(logging.Filter):
    """Drops asyncio's records about abandoned reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else ""
        return not _about_abandoned_read(f"{record.getMessage()} {error}")


def _unraisable_hook_over(previous):
    """An unraisable hook that drops abandoned reads' reports and passes the rest to `previous`."""

    def hook(unraisable):
        closed_loop = unraisable.object is None and str(unraisable.exc_value) == "Event loop is closed"
        if not (closed_loop or _about_abandoned_read(f"{unraisable.object!r} {unraisable.exc_value}")):
            previous(unraisable)

    hook.drops_abandoned_reads = True
    return hook
