"""Retrieval quality, side by side: gtr_jax and the sentence-transformers peer at one setup.

    python bench/bench_quality.py --task=demo --preset=issue --seeds=0,1,2
    python bench/bench_quality.py --task=pydocs --preset=issue --seeds=0,1,2
    python bench/bench_quality.py --task=pydocs --mode=controlled --seeds=0 --losses=in_batch

Both trainers get the same model (a T5.1.1-shaped SDE encoder, mean pooling, a bias-free
projection, L2 norm, no dropout), the same token ids (gtr_jax's SentencePiece tokenizer,
EOS appended), τ, batch, steps and Adafactor schedule (linear warmup, then linear decay to
0). gtr_jax trains through its command line (`gtr-jax train` with gin/runs/finetune.gin,
gin/models/t5_1_1_tiny.gin resized, gin/architectures/sde.gin, gin/losses/*.gin) with its
default recipe; the peer is bench/quality_peer.py. Each trained model ranks the task's
test corpus for its test queries (exact search, top 100), and every run, BM25's
(gtr_jax.eval.bm25, bm25s) included, is scored by pytrec_eval: MRR@10 and P@1.

Tasks (built offline): `demo`, gtr_jax's embedded standard-library docstring task (2,109
training pairs; 261 test queries over all 2,370 passages), and `pydocs`, the same kind of
task over the docstrings of the installed third-party packages (bench/quality_data.py).

Modes:
  independent   each trainer draws its own init and its own data order from the seed;
  same_init     gtr_jax starts from the peer's initial weights (`save_pretrained`, then
                `gtr-jax import --from=sentence-transformers`); with `--systems=gtr_jax`
                the peer's init is built without training the peer (its runs are the
                independent mode's: the same init and order);
  same_batches  the peer trains on gtr_jax's own batches (gtr_jax.data.pipeline.batch_iterator);
  controlled    both, with per-step losses of both recorded, plotted (*_loss_curves.png)
                and compared: the first step where they differ by more than 1%.

Writes bench/results/quality_<task>_<preset>_<mode>.json (`--results`) after every run,
and prints the table of means ± std over seeds. Run again, it keeps the runs that file
holds for the same task, preset and mode and trains only the missing ones, so a long
comparison can be spread over several sittings (models go to --workdir). `--gtr_jax_gin`
trains a variant of gtr_jax's recipe, recorded beside the default recipe's runs and the
peer's (which it reuses) under a name of its own:

    python bench/bench_quality.py --seeds=0,1,2,3,4 --systems=gtr_jax \
        --gtr_jax_gin=LossConfig.mask_duplicates=False
"""

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

# transformers (the peer's) must not load its TensorFlow or Flax halves: Keras 3 breaks the
# former, jax 0.10 the latter.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Everything here computes on the CPU. With libtpu installed (the test extras) JAX would
# otherwise initialise it, and its warnings about a missing TPU reached this output.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality_peer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("independent", "same_init", "same_batches", "controlled")
LOSS_GIN = {"in_batch": "losses/in_batch.gin", "samtone": "losses/samtone_query.gin"}
TOP_K = 100
PART_THRESHOLD = 0.01  # relative loss difference at which two curves are said to part


@dataclasses.dataclass(frozen=True)
class Preset:
    """Model size and training recipe shared by both trainers."""

    d_model: int
    num_layers: int
    num_heads: int
    d_kv: int
    d_ff: int
    embed_dim: int
    steps: int
    warmup_steps: int
    batch_size: int = 64
    query_length: int = 32
    doc_length: int = 128
    learning_rate: float = 1e-3
    temperature: float = 0.01


PRESETS = {
    # The setup of the quality issue: what both trainers were first compared at.
    "issue": Preset(d_model=256, num_layers=4, num_heads=4, d_kv=64, d_ff=512, embed_dim=256, steps=600,
                    warmup_steps=100),
    # The same recipe on a model ~8x cheaper per step, for a 2-core CPU's time budget.
    "quick": Preset(d_model=128, num_layers=2, num_heads=4, d_kv=32, d_ff=256, embed_dim=128, steps=600,
                    warmup_steps=100),
}


@dataclasses.dataclass
class Task:
    """What both trainers and the evaluation need of one benchmark task."""

    name: str
    vocabulary: str
    vocab_size: int
    train_task: str  # the registered training task
    msmarco_dir: str | None  # its MSMARCO_DIR, for a task in the MS MARCO layout
    eval_bindings: list  # gin flags selecting the evaluation task
    eval_task: str  # the name gtr-jax evaluate writes <eval_task>.run under
    pairs: object  # gtr_jax.data.examples.Pairs
    eval_set: object  # gtr_jax.data.examples.EvalSet

    def train_bindings(self) -> list[str]:
        """The gin flags selecting the training task, its data and its vocabulary."""
        flags = [f"--gin.MIXTURE_OR_TASK_NAME={self.train_task}"]
        if self.msmarco_dir:
            flags += [f"--gin.MSMARCO_DIR={self.msmarco_dir}", f"--gin.VOCABULARY={self.vocabulary}"]
        return flags


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_task(name: str, workdir: str) -> Task:
    """The demo task, or the pydocs task built (once) under WORKDIR/pydocs."""
    from gtr_jax.data.sources import beir, demo, msmarco

    if name == "demo":
        return Task("demo", demo.DEMO_VOCABULARY, 4096, "demo_train", None, ["--gin.MIXTURE_OR_TASK_NAME=demo_test"],
                    "demo_test", demo.pairs("train"), demo.eval_set("test"))
    import quality_data  # bench/

    directory = os.path.join(workdir, "pydocs")
    quality_data.build(directory)
    vocabulary = os.path.join(directory, "spiece.model")
    train_dir, test_dir = os.path.join(directory, "train"), os.path.join(directory, "test")
    return Task("pydocs", vocabulary, 8000, "msmarco_train_pairs", train_dir,
                ["--gin.MIXTURE_OR_TASK_NAME=@beir_task()", "--gin.beir_task.name='pydocs'",
                 f"--gin.beir_task.directory='{test_dir}'"],
                "beir_pydocs", msmarco.train_pairs(train_dir), beir.eval_set(test_dir, "test"))


def with_steps(preset: Preset, steps: int | None) -> Preset:
    """The preset, its steps overridden when given (warmup then at most a sixth of them)."""
    if steps:
        preset = dataclasses.replace(preset, steps=steps, warmup_steps=min(preset.warmup_steps, steps // 6))
    return preset


def encoder_config(preset: Preset, task: Task):
    """gtr_jax's T5Config of the preset (the peer builds the same model from it)."""
    from gtr_jax.model import t5

    return t5.T5Config(vocab_size=task.vocab_size, d_model=preset.d_model, num_layers=preset.num_layers,
                       num_heads=preset.num_heads, d_kv=preset.d_kv, d_ff=preset.d_ff, dropout_rate=0.0)


def gtr_jax_command(command: str, *flags) -> None:
    """Run `gtr-jax COMMAND FLAGS` on the default single CPU device; raise with its output on failure."""
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-m", "gtr_jax", command, *flags], capture_output=True, text=True,
                            env={**environment, "JAX_PLATFORMS": "cpu"}, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"gtr-jax {command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def train_gtr_jax(preset, task, loss, seed, run_dir, init_dir=None, log_every=50, extra_flags=()) -> dict:
    """Train with `gtr-jax train` (EXTRA_FLAGS appended: gin files, bindings), rank the test set with
    `gtr-jax evaluate`; the run file and losses. An earlier run left in RUN_DIR (by a benchmark
    killed before it recorded that run) is removed first: `gtr-jax train` would resume it, and
    train_seconds would not time a whole run."""
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    size = [f"--gin.T5Config.{field}={getattr(preset, field)}" for field in ("d_model", "num_layers", "num_heads",
                                                                             "d_kv", "d_ff")]
    gtr_jax_command(
        "train", "--gin_file=runs/finetune.gin", "--gin_file=models/t5_1_1_tiny.gin",
        "--gin_file=architectures/sde.gin", f"--gin_file={LOSS_GIN[loss]}", f"--gin.MODEL_DIR={run_dir}",
        *task.train_bindings(), f"--gin.TRAIN_STEPS={preset.steps}", f"--gin.BATCH_SIZE={preset.batch_size}",
        f"--gin.TASK_FEATURE_LENGTHS={{'query': {preset.query_length}, 'doc': {preset.doc_length}}}",
        f"--gin.LEARNING_RATE={preset.learning_rate}", f"--gin.WARMUP_STEPS={preset.warmup_steps}",
        f"--gin.TEMPERATURE={preset.temperature}", f"--gin.SEED={seed}", *size,
        f"--gin.T5Config.vocab_size={task.vocab_size}", "--gin.T5Config.dropout_rate=0.0",
        f"--gin.ModelConfig.embed_dim={preset.embed_dim}", f"--gin.ModelConfig.query_max_length={preset.query_length}",
        f"--gin.ModelConfig.doc_max_length={preset.doc_length}", f"--gin.train.log_every={log_every}",
        f"--gin.train.checkpoint_every={preset.steps}", "--gin.train.progress=False",
        *([f"--gin.INIT_CHECKPOINT={init_dir}"] if init_dir else []), *extra_flags)
    train_seconds = time.perf_counter() - start
    eval_dir = os.path.join(run_dir, "eval")
    gtr_jax_command("evaluate", "--gin_file=eval/retrieval.gin", f"--gin.MODEL_DIR={run_dir}",
                    f"--gin.EVAL_OUTPUT_DIR={eval_dir}", f"--gin.EVAL_TOP_K={TOP_K}", "--gin.evaluate.progress=False",
                    *task.eval_bindings)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    losses = [(r["step"], r["loss"]) for r in logged if "loss" in r]
    return {"run": read_run(os.path.join(eval_dir, f"{task.eval_task}.run")), "losses": losses,
            "train_seconds": train_seconds}


def token_arrays(tokenizer, texts, length):
    """Padded [n, length] ids of texts, tokenized as gtr_jax's pipeline does (EOS kept)."""
    from gtr_jax.data import vocab

    return vocab.pad_batch(tokenizer.encode([_text(t) for t in texts], length), length)


def peer_batches(preset, task, seed, same_batches):
    """(query_tokens, doc_tokens) of each step: gtr_jax's batches, or a seeded permutation's."""
    if same_batches:
        import gin

        import tasks  # noqa: F401  (registers the tasks)
        from gtr_jax.data import pipeline

        gin.clear_config()
        if task.msmarco_dir:
            gin.bind_parameter("msmarco_dir.directory", task.msmarco_dir)
            gin.bind_parameter("Tokenizer.path", task.vocabulary)
        batches = pipeline.batch_iterator(task.train_task, global_batch_size=preset.batch_size, seed=seed,
                                      feature_lengths={"query": preset.query_length, "doc": preset.doc_length})
        for _ in range(preset.steps):
            batch = next(batches)
            yield batch["query_tokens"], batch["doc_tokens"]
        return
    from gtr_jax.data.vocab import shared_tokenizer

    tokenizer = shared_tokenizer(task.vocabulary)
    pairs, rng, order = task.pairs, np.random.default_rng(seed), np.empty(0, np.int64)
    for _ in range(preset.steps):
        if len(order) < preset.batch_size:
            order = np.concatenate([order, rng.permutation(len(pairs))])
        rows, order = order[: preset.batch_size], order[preset.batch_size :]
        queries = [pairs.queries.texts[i] for i in pairs.query_rows[rows]]
        docs = [pairs.docs.texts[i] for i in pairs.doc_rows[rows]]
        yield token_arrays(tokenizer, queries, preset.query_length), token_arrays(tokenizer, docs, preset.doc_length)


def peer_model(preset, task, seed, workdir):
    """The peer's fresh SentenceTransformer of the preset for SEED, built under WORKDIR
    (quality_peer.build_model is deterministic in the seed)."""
    os.makedirs(workdir, exist_ok=True)
    return quality_peer.build_model(encoder_config(preset, task), preset.embed_dim, task.vocabulary, seed, workdir,
                                    max_seq_length=preset.doc_length)


def save_peer_init(preset, task, seed, path) -> None:
    """The peer's initial weights for SEED, saved to PATH without training: the init that
    train_peer starts from and saves."""
    peer_model(preset, task, seed, os.path.dirname(path)).save(path, safe_serialization=True)


def train_peer(preset, task, loss, seed, run_dir, same_batches=False) -> dict:
    """Train the peer; rank the test set. Its initial weights are saved under RUN_DIR/init."""
    import torch

    from gtr_jax.data.vocab import shared_tokenizer

    torch.set_num_threads(os.cpu_count())
    model = peer_model(preset, task, seed, run_dir)
    model.save(os.path.join(run_dir, "init"), safe_serialization=True)
    optimizer, scheduler = quality_peer.make_optimizer(model, base_learning_rate=preset.learning_rate,
                                                       warmup_steps=preset.warmup_steps, total_steps=preset.steps)
    loss_fn = quality_peer.make_loss(model, loss, preset.temperature)
    # Every batch is built before the clock starts: train_seconds times the peer's steps only, and
    # gtr_jax's tf.data pipeline (same_batches) is closed before torch trains beside it.
    batches = list(peer_batches(preset, task, seed, same_batches))
    start, losses = time.perf_counter(), []
    for step, (queries, docs) in enumerate(batches, 1):
        losses.append((step, quality_peer.train_step(model, loss_fn, optimizer, scheduler, queries, docs)))
    train_seconds = time.perf_counter() - start
    tokenizer = shared_tokenizer(task.vocabulary)
    evaluation = task.eval_set
    query_emb = quality_peer.encode(model, token_arrays(tokenizer, evaluation.query_texts, preset.query_length))
    doc_emb = quality_peer.encode(model, token_arrays(tokenizer, evaluation.doc_texts, preset.doc_length))
    scores = query_emb @ doc_emb.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    run = {_text(q): {_text(evaluation.doc_ids[j]): float(scores[i, j]) for j in top[i]}
           for i, q in enumerate(evaluation.query_ids)}
    return {"run": run, "losses": losses, "train_seconds": train_seconds}


def bm25_run(task) -> dict:
    """BM25's top 100 for each test query (gtr_jax.eval.bm25: bm25s with its stated settings)."""
    from gtr_jax.eval import bm25

    evaluation = task.eval_set
    index = bm25.Bm25Index.build([_text(i) for i in evaluation.doc_ids], [_text(t) for t in evaluation.doc_texts])
    doc_ids, scores = index.search([_text(t) for t in evaluation.query_texts], TOP_K)
    return {_text(q): {d: float(s) for d, s in zip(doc_ids[i], scores[i]) if d}
            for i, q in enumerate(evaluation.query_ids)}


def read_run(path: str) -> dict:
    """A TREC run file (read by gtr_jax.eval.metrics) as {qid: {docid: score}}."""
    from gtr_jax.eval import metrics

    run = {}
    parsed = metrics.read_run(path)
    for qid, docid, score in zip(parsed.query_ids, parsed.doc_ids, parsed.scores):
        run.setdefault(str(qid), {})[str(docid)] = float(score)
    return run


def score(run: dict, qrels: dict) -> dict:
    """MRR@10 and P@1 of a run, by pytrec_eval (trec_eval's code) on the run cut to its top 10."""
    import pytrec_eval

    # trec_eval's order: score descending, ties by document id descending.
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]) for q, docs in run.items()}
    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "P_1"}).evaluate(top10)
    # Queries a run does not answer count 0, as in trec_eval -c.
    mrr = sum(per_query.get(q, {}).get("recip_rank", 0.0) for q in qrels) / len(qrels)
    p1 = sum(per_query.get(q, {}).get("P_1", 0.0) for q in qrels) / len(qrels)
    return {"mrr_10": mrr, "P_1": p1}


def eval_qrels(task: Task) -> dict:
    """The task's test qrels as {query id: {document id: relevance}}, ids as strings."""
    return {_text(q): {_text(d): r for d, r in docs.items()} for q, docs in task.eval_set.qrels.items()}


def previous_results(results_path: str, task: str, preset: Preset, mode) -> dict:
    """The results an earlier invocation wrote for the same task, preset and mode (the
    benchmark resumes: runs take minutes to hours on a CPU), else {}."""
    if not os.path.exists(results_path):
        return {}
    with open(results_path) as f:
        previous = json.load(f)
    same = (previous["task"], previous["preset"], previous["mode"]) == (task, dataclasses.asdict(preset), mode)
    return previous if same else {}


def parting_step(ours, theirs) -> int | None:
    """The first step at which the two loss curves differ by more than PART_THRESHOLD (relative)."""
    theirs = dict(theirs)
    for step, value in ours:
        if step in theirs and abs(value - theirs[step]) > PART_THRESHOLD * abs(theirs[step]):
            return step
    return None


def plot_curves(curves: dict, path: str) -> None:
    """Per-step losses of both trainers, one panel per (loss, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (label, by_system) in zip(axes[0], sorted(curves.items())):
        for system, losses in sorted(by_system.items()):
            ax.plot(*zip(*losses), label=system, linewidth=1)
        # A log scale: the late steps, where the curves may part, have small losses.
        ax.set(title=label, xlabel="step", ylabel="training loss", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def summarize(results: list[dict]) -> list[dict]:
    """Mean ± std over seeds of each (system, loss)."""
    rows = []
    for key in sorted({(r["system"], r["loss"]) for r in results}):
        runs = [r for r in results if (r["system"], r["loss"]) == key]
        row = {"system": key[0], "loss": key[1], "seeds": [r["seed"] for r in runs]}
        for measure in ("mrr_10", "P_1", "train_seconds"):
            values = [r[measure] for r in runs]
            row[measure] = statistics.mean(values)
            row[measure + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def gaps_to_peer(rows) -> list[dict]:
    """Per loss, each other system's mean minus the peer's, with the standard error of that difference
    (the seeds of two systems are independent draws in every mode: sqrt(s1²/n1 + s2²/n2); None
    where a system has a single seed, whose spread is unknown)."""
    peer = {r["loss"]: r for r in rows if r["system"] == "peer"}
    gaps = []
    for r in rows:
        theirs = peer.get(r["loss"])
        if r["system"] == "peer" or theirs is None:
            continue
        gap = {"system": r["system"], "loss": r["loss"], "seeds": len(r["seeds"]), "peer_seeds": len(theirs["seeds"])}
        single_seed = min(len(r["seeds"]), len(theirs["seeds"])) < 2
        for measure in ("mrr_10", "P_1"):
            variances = [row[measure + "_std"] ** 2 / len(row["seeds"]) for row in (r, theirs)]
            gap[measure] = r[measure] - theirs[measure]
            gap[measure + "_se"] = None if single_seed else math.sqrt(sum(variances))
        gaps.append(gap)
    return gaps


def print_gaps(gaps) -> None:
    """Each gap to the peer as difference ± standard error, and in standard errors."""
    for g in gaps:
        # No error (and no ratio) where it is unknown or, for identical scores, zero.
        in_se = ", ".join(f"{name} {g[m]:+.3f}" + (f" ± {g[m + '_se']:.3f} ({g[m] / g[m + '_se']:+.1f} SE)"
                                                    if g[m + "_se"] else "")
                          for m, name in (("mrr_10", "MRR@10"), ("P_1", "P@1")))
        print(f"{g['system']} − peer, {g['loss']} ({g['seeds']} and {g['peer_seeds']} seeds): {in_se}")


def print_table(rows, bm25) -> None:
    """The summary rows and the BM25 line as a markdown table."""
    print("| system | loss | seeds | MRR@10 | P@1 | train s/run |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['system']} | {r['loss']} | {len(r['seeds'])} | {r['mrr_10']:.3f} ± {r['mrr_10_std']:.3f} | "
              f"{r['P_1']:.3f} ± {r['P_1_std']:.3f} | {r['train_seconds']:.0f} |")
    print(f"| BM25 (bm25s) | — | — | {bm25['mrr_10']:.3f} | {bm25['P_1']:.3f} | — |")


def main(argv=None):
    """Train, evaluate and tabulate every requested (system, loss, seed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("demo", "pydocs"), default="demo")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="issue")
    parser.add_argument("--mode", choices=MODES, default="independent")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--losses", default="in_batch,samtone")
    parser.add_argument("--systems", default="gtr_jax,peer")
    parser.add_argument("--steps", type=int, help="override the preset's steps")
    parser.add_argument("--workdir", default="bench_quality_out", help="model directories and the pydocs data")
    parser.add_argument("--results", help="results JSON (default: bench/results/quality_<task>_<preset>_<mode>.json)")
    parser.add_argument("--gtr_jax_gin", action="append", default=[], metavar="BINDING",
                        help="a gin binding added to gtr_jax's training (repeatable), e.g. "
                             "LossConfig.mask_duplicates=False; its runs are recorded as a system of their own, "
                             "beside the default recipe's and the peer's in the same results file")
    args = parser.parse_args(argv)
    preset = with_steps(PRESETS[args.preset], args.steps)
    seeds, losses = [int(s) for s in args.seeds.split(",")], args.losses.split(",")
    systems = args.systems.split(",")
    # The name each system's runs are recorded and tabulated under.
    labels = {"peer": "peer", "gtr_jax": "gtr_jax" + (f" [{', '.join(args.gtr_jax_gin)}]" if args.gtr_jax_gin else "")}
    gtr_jax_dir = re.sub(r"[^\w.=-]+", "_", "_".join(["gtr_jax", *args.gtr_jax_gin]))
    same_init = args.mode in ("same_init", "controlled")
    same_batches = args.mode in ("same_batches", "controlled")
    if args.mode == "controlled" and systems != ["gtr_jax", "peer"]:
        parser.error("the controlled mode needs both systems (it compares their loss curves)")
    workdir = os.path.abspath(os.path.join(args.workdir, f"{args.task}_{args.preset}_{args.mode}"))
    os.makedirs(workdir, exist_ok=True)
    name = f"quality_{args.task}_{args.preset}_{args.mode}"
    results_path = args.results or os.path.join(ROOT, "bench", "results", name + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    task = load_task(args.task, os.path.abspath(args.workdir))
    qrels = eval_qrels(task)
    bm25 = score(bm25_run(task), qrels)
    results, curves = previous_results(results_path, args.task, preset, args.mode).get("runs", []), {}

    def save():
        with open(results_path, "w") as f:
            json.dump({"task": args.task, "preset": dataclasses.asdict(preset), "mode": args.mode,
                       "bm25": bm25, "runs": results, "summary": summarize(results)}, f, indent=1)

    for seed in seeds:
        for loss in losses:
            run_dir = os.path.join(workdir, f"{loss}_seed{seed}")
            # Each system's result is saved as soon as it is scored, so a killed benchmark resumes
            # after the last finished run (one run takes up to an hour on a busy CPU).
            recorded = {r["system"]: r for r in results if (r["seed"], r["loss"]) == (seed, loss)}
            done = {system: recorded[labels[system]] for system in systems if labels[system] in recorded}
            # The peer first: same_init starts gtr_jax from the peer's init.
            for system in [s for s in ("peer", "gtr_jax") if s in systems]:
                if system in done:
                    print(f"{labels[system]} {loss} seed {seed}: kept from an earlier run of this benchmark")
                    continue
                if system == "peer":
                    outcome = train_peer(preset, task, loss, seed, os.path.join(run_dir, "peer"), same_batches)
                else:
                    init = None
                    if same_init:
                        init = os.path.join(run_dir, "gtr_jax_init")
                        peer_init = os.path.join(run_dir, "peer", "init")
                        if not os.path.isdir(peer_init):  # the peer is not trained in this invocation
                            save_peer_init(preset, task, seed, peer_init)
                        gtr_jax_command("import", "--from=sentence-transformers", peer_init, f"--output={init}",
                                        "--overwrite")
                    outcome = train_gtr_jax(preset, task, loss, seed, os.path.join(run_dir, gtr_jax_dir), init,
                                            log_every=1 if args.mode == "controlled" else 50,
                                            extra_flags=[f"--gin.{binding}" for binding in args.gtr_jax_gin])
                done[system] = {"system": labels[system], "loss": loss, "seed": seed, **score(outcome["run"], qrels),
                                "train_seconds": outcome["train_seconds"], "losses": outcome["losses"]}
                results.append(done[system])
                headline = {k: round(done[system][k], 4) for k in ("mrr_10", "P_1", "train_seconds")}
                print(f"{labels[system]} {loss} seed {seed}: {json.dumps(headline)}", flush=True)
                save()
            if args.mode == "controlled":
                curves[f"{loss}, seed {seed}"] = {s: r["losses"] for s, r in done.items()}
                done["gtr_jax"]["parting_step"] = parting_step(done["gtr_jax"]["losses"], done["peer"]["losses"])
                print(f"  loss curves part (>{PART_THRESHOLD:.0%}) at step {done['gtr_jax']['parting_step']}")
                save()
    if curves:
        plot_curves(curves, os.path.splitext(results_path)[0] + "_loss_curves.png")
    print(f"\n{args.task}, preset {args.preset} ({preset.steps} steps), mode {args.mode}:")
    print_table(summarize(results), bm25)
    print_gaps(gaps_to_peer(summarize(results)))
    print(f"results: {results_path}")


if __name__ == "__main__":
    main()
