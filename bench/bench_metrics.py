"""Benchmark (not a test): `metrics.evaluate` on trec_eval's code (pytrec_eval) vs the numpy engine it replaced.

A seeded synthetic run of 7,000 queries × 1,000 documents (ids drawn from a 500,000-document
corpus, scores on a 1/256 grid, so many are tied and the tie-break by document id is
exercised), with qrels of one to four graded judgments per query, mostly of documents near
the top of the run, some outside it, some below relevance 1. Scores are exact in float32,
where trec_eval compares them, so both engines rank alike and must give the same figures
(asserted, to 1e-12).

  pytrec_eval   gtr_jax.eval.metrics.evaluate of this working tree;
  numpy         the same function of commit 6890ab7 (gtr_jax/metrics.py, before it moved to
                gtr_jax/eval/ and onto pytrec_eval), read from git history into a temporary
                module, its imports pointed at today's package paths.

Measures: the 11 of issue #18 (MEASURES below). Reported: the first call and the median of
`--repeats` more, the engines taking turns so that other work on a shared machine weighs on
both alike. Writes bench/results/metrics_engine.json (`--results`) and prints a table.

    python bench/bench_metrics.py [--queries 7000] [--docs 1000] [--repeats 2]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_COMMIT = "6890ab7"
MEASURES = ("P_1", "P_10", "recall_10", "recall_100", "recall_1000", "ndcg_cut_10", "ndcg_cut_100", "map",
            "mrr_10", "recip_rank", "ndcg")
CORPUS = 500_000


def old_metrics_module():
    """gtr_jax/metrics.py of OLD_COMMIT as a module, its imports rewritten to today's package paths."""
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:gtr_jax/metrics.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    old_import = "from gtr_jax.text_files import read_bytes"
    if old_import not in source:
        raise SystemExit(f"{OLD_COMMIT}:gtr_jax/metrics.py no longer imports as expected: {old_import!r}")
    source = source.replace(old_import, "from gtr_jax.data.text_files import read_bytes")
    name = f"_gtr_jax_metrics_{OLD_COMMIT}"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses looks its class's module up there
    exec(compile(source, f"{OLD_COMMIT}:gtr_jax/metrics.py", "exec"), module.__dict__)
    return module


def synthetic(num_queries: int, docs_per_query: int, seed: int = 0):
    """(qrels, query ids, [num_queries, docs] doc ids, scores): a seeded run and its judgments."""
    rng = np.random.default_rng(seed)
    corpus = np.asarray([f"D{i}" for i in range(CORPUS)])
    query_ids = [f"Q{q}" for q in range(num_queries)]
    picks = np.stack([rng.choice(CORPUS, docs_per_query, replace=False) for _ in range(num_queries)])
    scores = np.round(rng.normal(size=picks.shape) * 256) / 256
    order = np.argsort(-scores, axis=1, kind="stable")  # each row best first, as a search returns it
    picks, scores = np.take_along_axis(picks, order, 1), np.take_along_axis(scores, order, 1)
    qrels = {}
    for q, qid in enumerate(query_ids):
        # Judged documents: mostly retrieved ones (more often near the top), now and then one outside the run.
        n = int(rng.integers(1, 5))
        ranks = np.minimum(rng.geometric(0.05, n) - 1, docs_per_query - 1)
        judged = np.where(rng.random(n) < 0.8, picks[q, ranks], rng.integers(0, CORPUS, n))
        qrels[qid] = {str(corpus[d]): int(rng.choice([0, 1, 1, 2, 3])) for d in judged}
    return qrels, query_ids, corpus[picks], scores


def timed_turns(fns: dict, repeats: int) -> dict:
    """{name: (first call's seconds, median of `repeats` more, last result)}, the calls of all fns interleaved."""
    first, times, results = {}, {name: [] for name in fns}, {}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            elapsed = time.perf_counter() - start
            if round_ == 0:
                first[name] = elapsed
            else:
                times[name].append(elapsed)
    return {name: (first[name], statistics.median(times[name]) if repeats else first[name], results[name])
            for name in fns}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=7000)
    parser.add_argument("--docs", type=int, default=1000, help="documents retrieved per query")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the first, per engine")
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "metrics_engine.json"))
    args = parser.parse_args()

    import pytrec_eval

    from gtr_jax.eval import metrics

    old = old_metrics_module()
    qrels, query_ids, doc_ids, scores = synthetic(args.queries, args.docs)
    run = metrics.Run.from_ranking(query_ids, doc_ids, scores)
    print(f"metrics.evaluate: {args.queries:,} queries × {args.docs:,} documents, {len(MEASURES)} measures, "
          f"{os.cpu_count()} CPUs")
    timings = timed_turns({
        "pytrec_eval": lambda: metrics.evaluate(qrels, run, MEASURES),
        "numpy": lambda: old.evaluate(qrels, run, MEASURES),
    }, args.repeats)
    new_figures, old_figures = timings["pytrec_eval"][2], timings["numpy"][2]
    for name in ("num_q",) + MEASURES:
        if abs(new_figures[name] - old_figures[name]) > 1e-12:
            raise SystemExit(f"the engines disagree on {name}: {new_figures[name]!r} vs {old_figures[name]!r}")

    header = f"{'engine':<28} {'first s':>8} {'median s':>9}"
    print(header + "\n" + "-" * len(header))
    for name, label in (("pytrec_eval", f"pytrec_eval {pytrec_eval.__version__}"), ("numpy", f"numpy ({OLD_COMMIT})")):
        first, median, _ = timings[name]
        print(f"{label:<28} {first:>8.2f} {median:>9.2f}")
    speedup = timings["numpy"][1] / timings["pytrec_eval"][1]
    print(f"speed-up of pytrec_eval over numpy (medians): {speedup:.2f}x; same figures asserted")

    result = {
        "queries": args.queries,
        "docs_per_query": args.docs,
        "measures": list(MEASURES),
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "pytrec_eval": pytrec_eval.__version__},
        "pytrec_eval": {"first_s": timings["pytrec_eval"][0], "median_s": timings["pytrec_eval"][1]},
        "numpy": {"commit": OLD_COMMIT, "first_s": timings["numpy"][0], "median_s": timings["numpy"][1]},
        "speedup": speedup,
        "figures": new_figures,
    }
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
