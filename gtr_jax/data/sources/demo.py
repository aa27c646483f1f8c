"""The embedded demo task: retrieve a standard-library docstring from its summary.

Query: the first sentence of a function's, class's or method's docstring. Passage: its
qualified name and signature, then the rest of the docstring. Pairs come from the
installed Python (gtr_jax/data/sources/stdlib_docs.py walks it in a separate interpreter), need no
download and no data directory, and are deduplicated: a summary shared by several
objects is ambiguous as a query and is left out. Each pair's split follows from a hash
of its summary, so it is the same on every run and does not move when another Python
version adds or drops pairs. Ids are qualified names.
"""

import functools
import hashlib
import json
import os
import subprocess
import sys

from gtr_jax.data.sources import stdlib_docs
from gtr_jax.data.examples import EvalSet, Pairs, positive_pairs

DEMO_VOCABULARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_spm.model")
MIN_SUMMARY, MIN_REST = 15, 20
TEST_PERCENT = 10
SPLITS = ("train", "test")


@functools.cache
def _stdlib_entries() -> tuple:
    """[qualified name, signature, summary, rest] of the installed standard library."""
    # No inherited environment or working directory: nothing of this machine reaches the data.
    result = subprocess.run(
        [sys.executable, "-I", "-S", stdlib_docs.__file__],
        capture_output=True,
        text=True,
        check=True,
        env={"LC_ALL": "C.UTF-8"},
        cwd=os.path.dirname(sys.executable),
    )
    return tuple(tuple(entry) for entry in json.loads(result.stdout))


def split_of(summary: str, test_percent: int = TEST_PERCENT) -> str:
    """'test' for a fixed `test_percent` of summaries (by hash), else 'train'."""
    bucket = int.from_bytes(hashlib.blake2b(summary.encode(), digest_size=8).digest(), "little") % 100
    return "test" if bucket < test_percent else "train"


@functools.cache
def all_pairs() -> tuple:
    """(qualified name, query, passage, split) of every demo pair, in name order."""
    entries = [
        e for e in _stdlib_entries() if len(e[2]) >= MIN_SUMMARY and len(e[3]) >= MIN_REST and not e[2].startswith(">>>")
    ]
    uses: dict[str, int] = {}
    for _, _, summary, _ in entries:
        uses[summary] = uses.get(summary, 0) + 1
    return tuple(
        (name, summary, f"{name}{signature}\n{rest}", split_of(summary))
        for name, signature, summary, rest in entries
        if uses[summary] == 1
    )


def eval_set(split: str) -> EvalSet:
    """The split's queries, ranked over the passages of every split."""
    if split not in SPLITS:
        raise ValueError(f"demo split must be one of {SPLITS}, not {split!r}")
    pairs = all_pairs()
    queries = [(name, query) for name, query, _, s in pairs if s == split]
    return EvalSet(
        [name for name, _ in queries],
        [query for _, query in queries],
        [name for name, *_ in pairs],
        [passage for _, _, passage, _ in pairs],
        {name: {name: 1} for name, _ in queries},
    )


def pairs(split: str) -> Pairs:
    """(summary, passage) pairs of one split."""
    return positive_pairs(eval_set(split))


def texts(split: str = "train") -> list[str]:
    """Every query and passage of a split: what the demo vocabulary is trained on."""
    return [text for _, query, passage, s in all_pairs() if s == split for text in (query, passage)]
