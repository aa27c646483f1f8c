"""The embedded demo task and its vocabulary."""

import hashlib
import subprocess
import sys

import pytest

from gtr_jax.data import build_vocab
from gtr_jax.data.sources import demo


def test_enough_unique_pairs_on_python_311():
    pairs = demo.all_pairs()
    assert len(pairs) >= 2000
    assert len({query for _, query, _, _ in pairs}) == len(pairs) == len({name for name, *_ in pairs})
    assert all(len(query) >= demo.MIN_SUMMARY for _, query, _, _ in pairs)


def test_passage_has_name_signature_and_the_rest_of_the_docstring():
    by_name = {name: (query, passage) for name, query, passage, _ in demo.all_pairs()}
    query, passage = by_name["math.log"]
    assert query == "Return the logarithm of x to the given base."
    assert passage.startswith("math.log(x, [base=math.e])\n") and "natural logarithm" in passage


def test_split_is_fixed_by_the_summary_alone():
    pairs = demo.all_pairs()
    test = [p for p in pairs if p[3] == "test"]
    assert 0.05 < len(test) / len(pairs) < 0.15
    assert demo.split_of("Return the logarithm of x to the given base.") == "train"
    # A fresh interpreter (another hash seed) finds the same pairs and splits.
    code = "from gtr_jax.data.sources import demo; import hashlib; print(hashlib.sha256(repr(demo.all_pairs()).encode()).hexdigest())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "7"})
    assert run.stdout == hashlib.sha256(repr(pairs).encode()).hexdigest() + "\n"


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the committed vocabulary was built on Python 3.11.7")
def test_committed_vocabulary_rebuilds_byte_for_byte():
    with open(demo.DEMO_VOCABULARY, "rb") as f:
        committed = hashlib.sha256(f.read()).hexdigest()
    # Hashes, not bytes: pytest would spend minutes diffing two 300 KB byte strings.
    assert hashlib.sha256(build_vocab.build(demo.texts("train"))).hexdigest() == committed
