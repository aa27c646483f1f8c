"""Start-up of the commands: quiet logs, task registration, and jax.distributed for multi-process runs.

Quiet start-up: `gtr-jax` prints its own output, not TensorFlow's and XLA's start-up logs.

TensorFlow is here only to feed data (seqio) and to write TensorBoard files (clu). Its C++
libraries log as they load: "oneDNN custom operations are on", "Could not find cuda
drivers", on GPU machines "Unable to register cuDNN factory" and "TF-TRT Warning", each
library after absl's "All log messages before absl::InitializeLog() is called" notice,
and all of it again in every process. The static initializers that log run before
TensorFlow reads TF_CPP_MIN_LOG_LEVEL, so the variable alone cannot hide them:
`quiet_defaults` sets it (and TF_ENABLE_ONEDNN_OPTS, which turns the oneDNN notice off
where it starts), and `register_tasks`, the commands' one way to load TensorFlow, drops
what native code writes to stderr during that load below the same level. XLA, under JAX,
reads the variable too, and absl's Python logging follows the level, up to its errors.
Each setting is only a default: run with TF_CPP_MIN_LOG_LEVEL=0 to see every line.
"""

import contextlib
import os
import re
import sys
import tempfile

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# TensorFlow's levels, 0-3, as absl's severities (log-line letters) and absl-py verbosities;
# absl-py's errors (a library's Python code reporting a failure) show at every level.
SEVERITIES = "IWEF"
ABSL_VERBOSITIES = ("info", "warning", "error", "error")
_LOG_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+ +\d+ [^\s\]]+:\d+\] ")
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def quiet_defaults():
    """Default TF_CPP_MIN_LOG_LEVEL to 3 and TF_ENABLE_ONEDNN_OPTS to 0; absl-py logs at that level.

    Call before anything imports TensorFlow or JAX (both read the variables once).
    """
    import absl.logging

    os.environ.setdefault(LEVEL_VARIABLE, "3")
    # TensorFlow computes nothing here that oneDNN would speed up: it tokenizes and batches.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    absl.logging.set_verbosity(ABSL_VERBOSITIES[min_level()])


def min_level() -> int:
    """TF_CPP_MIN_LOG_LEVEL as 0 (everything) to 3 (nothing below fatal); 0 if unset or not a level."""
    value = os.environ.get(LEVEL_VARIABLE, "")
    return min(int(value), 3) if value.isdigit() else 0


def is_below(line: str, level: int) -> bool:
    """Whether a line native code wrote to stderr is an absl log line (or absl's notice) below `level`."""
    if line.startswith(_ABSL_NOTICE):
        return SEVERITIES.index("W") < level
    match = _LOG_LINE.match(line)
    return bool(match) and SEVERITIES.index(match.group(1)) < level


@contextlib.contextmanager
def native_logs_filtered():
    """Drop the absl log lines below TF_CPP_MIN_LOG_LEVEL that native code writes to stderr meanwhile.

    Everything else written to stderr in the block is passed on when it ends, in order.
    """
    level = min_level()
    try:
        saved = os.dup(2) if level else None
    except OSError:  # no stderr to filter
        saved = None
    if saved is None:
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not is_below(line, level)))
            sys.stderr.flush()


def register_tasks():
    """Register every gtr_jax seqio task (`import tasks`), loading TensorFlow quietly.

    The data pipeline that `tasks` imports keeps TensorFlow off the accelerators.
    """
    with native_logs_filtered():
        import tasks  # noqa: F401


def add_distributed_arguments(parser):
    """The flags of a multi-process run (`train`, `mine`): explicit coordinator, or Cloud TPU's environment."""
    parser.add_argument("--coordinator_address", help="host:port of process 0, for multi-process runs off Cloud TPU")
    parser.add_argument("--num_processes", type=int, help="number of processes (with --coordinator_address)")
    parser.add_argument("--process_id", type=int, help="this process's index (with --coordinator_address)")
    parser.add_argument("--multihost_tpu", action="store_true",
                        help="initialize jax.distributed from the TPU environment")


def initialize_distributed(args):
    """jax.distributed for multi-process runs: explicit flags, or auto-detected on Cloud TPU."""
    import jax

    if args.coordinator_address:
        jax.distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                                   process_id=args.process_id)
    elif args.multihost_tpu:
        jax.distributed.initialize()
