"""The quality benchmark's statistics: means, spreads and gaps to the peer over seeds.

The README's quality claims ("behind by 0.007 ± 0.007, 1.0 standard error") are the
numbers bench/bench_quality.py prints; here they are checked against a float64 loop.
"""

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import bench_quality  # noqa: E402

PEER = {0: (0.16, 0.11), 1: (0.19, 0.14), 2: (0.18, 0.12), 3: (0.15, 0.10)}
OURS = {0: (0.17, 0.12), 1: (0.15, 0.09), 2: (0.20, 0.15)}


def runs(system, by_seed, loss="in_batch"):
    return [{"system": system, "loss": loss, "seed": seed, "mrr_10": mrr, "P_1": p1, "train_seconds": 1.0}
            for seed, (mrr, p1) in by_seed.items()]


def mean_and_sample_variance(values):
    mean = 0.0
    for v in values:
        mean += v / len(values)
    variance = 0.0
    for v in values:
        variance += (v - mean) ** 2 / (len(values) - 1)
    return mean, variance


def test_gap_is_difference_of_means_with_its_standard_error():
    rows = bench_quality.summarize(runs("peer", PEER) + runs("gtr_jax", OURS))
    [gap] = bench_quality.gaps_to_peer(rows)
    assert (gap["system"], gap["loss"], gap["seeds"], gap["peer_seeds"]) == ("gtr_jax", "in_batch", 3, 4)
    for index, measure in enumerate(("mrr_10", "P_1")):
        ours_mean, ours_variance = mean_and_sample_variance([v[index] for v in OURS.values()])
        peer_mean, peer_variance = mean_and_sample_variance([v[index] for v in PEER.values()])
        assert gap[measure] == pytest.approx(ours_mean - peer_mean, abs=1e-12)
        assert gap[measure + "_se"] == pytest.approx(math.sqrt(ours_variance / 3 + peer_variance / 4), abs=1e-12)


def test_gaps_are_per_loss_and_need_two_seeds_for_an_error():
    rows = bench_quality.summarize(runs("peer", PEER) + runs("gtr_jax", OURS)
                                   + runs("peer", PEER, "samtone") + runs("gtr_jax", {5: (0.2, 0.1)}, "samtone")
                                   + runs("gtr_jax [x=1]", OURS, "other_loss_without_a_peer"))
    gaps = {g["loss"]: g for g in bench_quality.gaps_to_peer(rows)}
    assert set(gaps) == {"in_batch", "samtone"}
    assert gaps["samtone"]["mrr_10"] == pytest.approx(0.2 - sum(v[0] for v in PEER.values()) / 4)
    assert gaps["samtone"]["mrr_10_se"] is None and gaps["in_batch"]["mrr_10_se"] > 0
