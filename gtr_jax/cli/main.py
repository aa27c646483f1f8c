"""The `gtr-jax` command line (also `python -m gtr_jax`): the parser, and the one place errors end.

Each subcommand is a module of this package with `add_parser(commands)` and `run(args)`.
Every subcommand reports a user's mistake (a missing file, a malformed line, a wrong
flag) as one line on stderr and exits non-zero, without a traceback.
"""

import argparse
import sys

from gtr_jax.cli import startup

# Before anything imports TensorFlow or JAX, which read their logging settings once.
startup.quiet_defaults()

from gtr_jax.train import host_memory  # noqa: E402  (imports no JAX)

# Before anything imports JAX: XLA's CPU runtime would otherwise fault its step buffers
# back in from the kernel on every step (see host_memory).
host_memory.retain_freed_memory_if_jax_runs_on_cpu()

from gtr_jax.cli import analyze, compile, encode, evaluate, export, import_weights, metrics, mine, train  # noqa: E402
from gtr_jax.cli.gin_flags import parse_gin, split_gin_flags  # noqa: E402, F401  (parse_gin: for tests and scripts)
from gtr_jax.errors import UserError  # noqa: E402

# In the order `gtr-jax --help` lists them.
COMMANDS = (train, compile, import_weights, encode, export, evaluate, mine, metrics, analyze)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="gtr-jax", description="GTR dual encoders with the SamToNe loss, in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv=None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv, gin_bindings = split_gin_flags(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    args.gin_bindings = gin_bindings
    try:
        args.run(args)
    except UserError as e:
        # gin appends "In call to configurable ..." lines to errors raised inside configurables.
        print(f"gtr-jax {args.command}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gtr-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
