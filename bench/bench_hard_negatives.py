"""Hard negatives, measured: in-batch only vs + BM25 negatives vs + self-mined negatives (one round).

    python bench/bench_hard_negatives.py --task=demo --preset=quick --seeds=0,1,2
    python bench/bench_hard_negatives.py --task=pydocs --preset=quick --seeds=0,1,2
    python bench/bench_hard_negatives.py --task=demo --preset=smoke --seeds=0   # the pipeline end to end

Per task, seed and loss (in-batch softmax, gin/losses/in_batch.gin; SamToNe on the query side,
gin/losses/samtone_query.gin), three gtr_jax models, each trained through `gtr-jax train` as
bench/bench_quality.py trains gtr_jax (its presets: model, steps, queries per batch, schedule, τ):
  A  in-batch only: the training task's (query, passage) pairs;
  B  + BM25 negatives: `gtr-jax mine --miner=bm25` over the training task (demo_train, or
     msmarco_train_pairs on pydocs' MS MARCO-layout training files), then
     gin/runs/hard_negatives_bm25.gin: each query brings its first --num_negatives negatives into
     the loss's pool;
  C  + self-mined (one ANCE/RocketQA round): `gtr-jax mine --miner=model` with model A of the
     same seed and loss, then the same join. Positive-aware filtering (--max_score_ratio, e.g.
     NV-Retriever's 0.95) is off by default: these models, trained from scratch at τ = 0.01,
     score most passages within a few percent of the positive's cosine, so the filter leaves
     most queries no negative, or only ones ranked far below the positive (README § Hard
     negatives). Both tasks have one relevant passage a query, their passages deduplicated.
     By default (--self_init=scratch) C trains from the same random init as A and B for the same
     steps, as RocketQA trains a fresh model on its denoised negatives: A, B and C then differ in
     their negatives only. --self_init=continue trains C from A's weights instead
     (gin/runs/self_mined.gin), the same number of further steps: twice A's training in all.
Both miners draw --num_negatives from the candidates ranked --rank_range once the query's known
positives and texts equal to one are dropped; the draw is seeded by the run's seed. Every
query keeps the same batch, but B and C also encode its negatives, so their steps cost more
(train s/run in the table). Pairs left with fewer negatives than asked are skipped (the run
files' SHORT_ROWS); each mining summary counts them.

Every model ranks the task's test corpus (`gtr-jax evaluate`, top 100), scored by pytrec_eval:
MRR@10 and P@1, mean ± std over seeds, with bench_quality's BM25 line and the paired
difference of B and C from A (same seed, same loss). Writes
bench/results/hard_negatives_<task>_<preset>.json (`--results`) after every run: every run and
every mining summary. Run again, it keeps the runs that file holds for the same task, preset and
settings, and trains only the missing ones (models and negatives go to --workdir).
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_quality import (PRESETS as QUALITY_PRESETS, ROOT, Preset, bm25_run, eval_qrels, with_steps,  # noqa: E402
                           gtr_jax_command, load_task, previous_results, print_table, score, summarize, train_gtr_jax)

PRESETS = {
    **QUALITY_PRESETS,
    # A model and a run small enough to check the whole pipeline in minutes; its figures mean nothing.
    "smoke": Preset(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64, embed_dim=32, steps=20, warmup_steps=4,
                    batch_size=16, query_length=16, doc_length=64),
}
SYSTEMS = {"A": "A in-batch only", "B": "B + BM25 negatives", "C": "C + self-mined"}


def mine(task, miner: str, output: str, seed: int, args, model_dir: str | None = None) -> dict:
    """Run `gtr-jax mine` over the task's training pairs into OUTPUT (JSONL); its summary."""
    flags = [f"--task={task.train_task}", f"--miner={miner}", f"--num_negatives={args.num_negatives}",
             f"--rank_range={args.rank_range}", f"--seed={seed}", f"--output={output}", "--quiet"]
    if task.msmarco_dir:
        flags.append(f"--gin.MSMARCO_DIR={task.msmarco_dir}")
    if miner == "model":
        # A smaller chunk than the default bounds memory when a score ratio sends the miner deep into
        # the ranking; the negatives drawn do not depend on it.
        flags += [f"--model_dir={model_dir}", "--query_chunk=2048"]
        if args.max_score_ratio is not None:
            flags.append(f"--max_score_ratio={args.max_score_ratio}")
    gtr_jax_command("mine", *flags)
    with open(output + ".summary.json") as f:
        return json.load(f)


def negatives_flags(gin_file: str, path: str, num_negatives: int) -> list[str]:
    """The `gtr-jax train` flags joining the pairs task with the negatives file at PATH."""
    return [f"--gin_file={gin_file}", f"--gin.NEGATIVES_FILE={path}", f"--gin.NUM_NEGATIVES={num_negatives}"]


def paired_differences(results: list[dict]) -> list[dict]:
    """B − A and C − A in MRR@10 and P@1 per (loss, seed), mean ± std over the seeds that have both."""
    by_key = {(r["system"], r["loss"], r["seed"]): r for r in results}
    rows = []
    for loss in sorted({r["loss"] for r in results}):
        for variant in ("B", "C"):
            seeds = sorted(s for (system, l, s) in by_key if (system, l) == (SYSTEMS[variant], loss)
                           and (SYSTEMS["A"], loss, s) in by_key)
            if not seeds:
                continue
            row = {"system": SYSTEMS[variant], "loss": loss, "seeds": seeds}
            for measure in ("mrr_10", "P_1"):
                diffs = [by_key[SYSTEMS[variant], loss, s][measure] - by_key[SYSTEMS["A"], loss, s][measure]
                         for s in seeds]
                row[measure] = statistics.mean(diffs)
                row[measure + "_std"] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            rows.append(row)
    return rows


def print_report(results: list[dict], minings: list[dict], bm25: dict) -> None:
    """The mining summaries, the table of means ± std and the paired differences from A."""
    # Considered per row: how deep the ranking was read to find the ranks drawn from, after the drops.
    print("| mined | seed | loss | rows | rows short of k (none) | dropped: positive / same text / score ratio "
          "| considered per row | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for m in sorted(minings, key=lambda m: (m["miner"], m["seed"], m["loss"] or "")):
        s, dropped = m["summary"], m["summary"]["dropped"]
        print(f"| {m['miner']} | {m['seed']} | {m['loss'] or '—'} | {s['rows']:,} | {s['rows_with_fewer']:,} "
              f"({s['rows_with_none']:,}) | {dropped['known_positive']:,} / {dropped['duplicate_text']:,} / "
              f"{format(dropped['score_ratio'], ',') if s['max_score_ratio'] is not None else 'off'} | "
              f"{s['candidates_considered'] / s['rows']:,.0f} | {s['seconds']['total']:.0f} |")
    print()
    print_table(summarize(results), bm25)
    print("\n| difference from A (same seed) | loss | seeds | MRR@10 | P@1 |")
    print("| --- | --- | --- | --- | --- |")
    for r in paired_differences(results):
        print(f"| {r['system']} | {r['loss']} | {len(r['seeds'])} | {r['mrr_10']:+.3f} ± {r['mrr_10_std']:.3f} | "
              f"{r['P_1']:+.3f} ± {r['P_1_std']:.3f} |")


def main(argv=None):
    """Mine, train, evaluate and tabulate every missing (seed, loss, system)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("demo", "pydocs"), default="demo")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--losses", default="in_batch,samtone")
    parser.add_argument("--steps", type=int, help="override the preset's steps")
    parser.add_argument("--num_negatives", type=int, default=1, help="mined negatives per query, k (default 1)")
    parser.add_argument("--rank_range", default="1:30", help="the candidates' ranks they are drawn from (default 1:30)")
    parser.add_argument("--max_score_ratio", type=lambda v: None if v == "off" else float(v), default=None,
                        help="self-mining drops candidates scoring above this fraction of the positive's score, "
                             "e.g. 0.95 (default: off)")
    parser.add_argument("--self_init", choices=("scratch", "continue"), default="scratch",
                        help="C trains from the seed's random init (scratch) or from model A's weights (continue)")
    parser.add_argument("--workdir", default="bench_hard_negatives_out", help="models, negatives and the pydocs data")
    parser.add_argument("--results", help="results JSON (default: bench/results/hard_negatives_<task>_<preset>.json)")
    args = parser.parse_args(argv)
    preset = with_steps(PRESETS[args.preset], args.steps)
    seeds, losses = [int(s) for s in args.seeds.split(",")], args.losses.split(",")
    settings = {"num_negatives": args.num_negatives, "rank_range": args.rank_range,
                "max_score_ratio": args.max_score_ratio, "self_init": args.self_init}
    workdir = os.path.abspath(os.path.join(args.workdir, f"{args.task}_{args.preset}"))
    os.makedirs(workdir, exist_ok=True)
    name = f"hard_negatives_{args.task}_{args.preset}.json"
    results_path = args.results or os.path.join(ROOT, "bench", "results", name)
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    task = load_task(args.task, os.path.abspath(args.workdir))
    qrels = eval_qrels(task)
    bm25 = score(bm25_run(task), qrels)
    # The mining summaries are kept with the runs they belong to.
    previous = previous_results(results_path, args.task, preset, settings)
    results, minings = previous.get("runs", []), previous.get("mining", [])

    def record(outcome: dict | None = None, mining: dict | None = None) -> None:
        """Add (or replace) a run's outcome or a mining summary, and rewrite the results JSON."""
        if outcome:
            results[:] = [r for r in results if (r["system"], r["loss"], r["seed"]) !=
                          (outcome["system"], outcome["loss"], outcome["seed"])] + [outcome]
            print(f"{outcome['system']}, {outcome['loss']}, seed {outcome['seed']}: " + json.dumps(
                {k: round(outcome[k], 4) for k in ("mrr_10", "P_1", "train_seconds")}), flush=True)
        if mining:
            minings[:] = [m for m in minings if (m["miner"], m["seed"], m["loss"]) !=
                          (mining["miner"], mining["seed"], mining["loss"])] + [mining]
        with open(results_path, "w") as f:
            json.dump({"task": args.task, "preset": dataclasses.asdict(preset), "mode": settings, "bm25": bm25,
                       "mining": minings, "runs": results, "summary": summarize(results),
                       "differences_from_A": paired_differences(results)}, f, indent=1)

    def train(system: str, loss: str, seed: int, run_dir: str, **kwargs) -> None:
        """Train and evaluate one model afresh in RUN_DIR (train_gtr_jax's KWARGS), and record it."""
        outcome = train_gtr_jax(preset, task, loss, seed, run_dir, **kwargs)
        record({"system": SYSTEMS[system], "loss": loss, "seed": seed, **score(outcome["run"], qrels),
                "train_seconds": outcome["train_seconds"], "losses": outcome["losses"]})

    bm25_files = {}
    for seed in seeds:
        for loss in losses:
            run_dir = os.path.join(workdir, f"seed{seed}", loss)
            done = {r["system"] for r in results if (r["seed"], r["loss"]) == (seed, loss)}
            missing = [v for v, system in SYSTEMS.items() if system not in done]
            if not missing:
                print(f"{loss} seed {seed}: results kept from an earlier run of this benchmark")
                continue
            model_a = os.path.join(run_dir, "A")
            if "A" in missing or ("C" in missing and not os.path.isdir(os.path.join(model_a, "checkpoints"))):
                train("A", loss, seed, model_a)
            if "B" in missing:
                if seed not in bm25_files:
                    bm25_files[seed] = os.path.join(workdir, f"seed{seed}", "bm25_negatives.jsonl")
                    record(mining={"miner": "bm25", "seed": seed, "loss": None,
                                   "summary": mine(task, "bm25", bm25_files[seed], seed, args)})
                train("B", loss, seed, os.path.join(run_dir, "B"), extra_flags=negatives_flags(
                    "runs/hard_negatives_bm25.gin", bm25_files[seed], args.num_negatives))
            if "C" in missing:
                negatives = os.path.join(run_dir, "self_negatives.jsonl")
                record(mining={"miner": "model", "seed": seed, "loss": loss,
                               "summary": mine(task, "model", negatives, seed, args, model_dir=model_a)})
                continued = args.self_init == "continue"
                gin_file = "runs/self_mined.gin" if continued else "runs/hard_negatives_bm25.gin"
                train("C", loss, seed, os.path.join(run_dir, "C"), init_dir=model_a if continued else None,
                      extra_flags=negatives_flags(gin_file, negatives, args.num_negatives))
    ratio = "off" if args.max_score_ratio is None else args.max_score_ratio
    print(f"\n{args.task}, preset {args.preset} ({preset.steps} steps, batch {preset.batch_size}), "
          f"k = {args.num_negatives} from ranks {args.rank_range}, self-mined with score ratio {ratio}, "
          f"C from {'A' if args.self_init == 'continue' else 'scratch'}:")
    print_report(results, minings, bm25)
    print(f"results: {results_path}")


if __name__ == "__main__":
    main()
