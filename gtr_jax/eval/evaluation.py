"""Corpus-level retrieval evaluation: `gtr-jax evaluate` and the trainer's periodic evaluator.

For each evaluation task (pipeline.load_eval_set) the queries are embedded with the query
tower and the whole corpus with the document tower, the top k documents of each query
are found by exact search (retrieval.search), and the run is scored with trec_eval's
definitions (metrics.py). The corpus is put in descending document-id order before it is
embedded, so that search's tie rule (lower row first) is trec_eval's (higher id first):
the top k is the first k of the ranking trec_eval would make of the full corpus, and the
written run file scores identically with `gtr-jax metrics`. `evaluate_bm25` (`gtr-jax
evaluate --ranker=bm25`) ranks the same tasks with BM25 instead (gtr_jax.eval.bm25, whose index
keeps the same tie order) and reports and writes them the same way. Task and mixture
names are looked up in seqio's registries: the caller registers them first (`import
tasks`, as the `gtr-jax` commands and gin/data.gin do).

Protocols (the headline measures, `headline_measures`): MS MARCO dev MRR@10 (mrr_10);
MultiReQA P@1 and MRR over each split's whole candidate pool (P_1, recip_rank: the
first relevant rank within the top k, so choose k large); BEIR nDCG@10 (ndcg_cut_10),
where, as BEIR does, a document whose id is the query's id is never retrieved.
"""

import dataclasses
import difflib
import json
import os

import gin
import jax
import numpy as np
from etils import epath

from gtr_jax.train import checkpoints, partitioning
from gtr_jax.model import dual_encoder
from gtr_jax.eval import metrics, retrieval
from gtr_jax.eval.encoding import TextEncoder
from gtr_jax.eval.retrieval import trec_order
from gtr_jax.errors import UserError
from gtr_jax.data.examples import EvalSet, take
from gtr_jax.data.vocab import model_dir_vocabulary, shared_tokenizer

PROTOCOLS = {"msmarco": ("mrr_10",), "multireqa": ("P_1", "recip_rank"), "beir": ("ndcg_cut_10",)}
OTHER_HEADLINES = ("P_1", "mrr_10", "ndcg_cut_10", "recall_100")  # e.g. demo_test


def headline_measures(task: str) -> tuple[str, ...]:
    """The measures a task's benchmark reports (see the module doc)."""
    return PROTOCOLS.get(task.split("_")[0], OTHER_HEADLINES)


@dataclasses.dataclass
class Ranking:
    """The top k documents of each query, best first."""

    query_ids: list[str]
    doc_ids: np.ndarray  # str [num_queries, k]; "" pads a row that has fewer than k
    scores: np.ndarray  # float32 [num_queries, k]

    def run(self) -> metrics.Run:
        """The ranking as a metrics.Run."""
        return metrics.Run.from_ranking(self.query_ids, self.doc_ids, self.scores)

    def write(self, path: str, tag: str = "gtr_jax"):
        """Write a TREC run file."""
        metrics.write_run(path, self.query_ids, self.doc_ids, self.scores, tag)


def subset_queries(eval_set: EvalSet, max_queries: int | None, seed: int = 0) -> EvalSet:
    """The eval set with a fixed random `max_queries` of its queries (all if None), in their order."""
    if not max_queries or max_queries >= len(eval_set.query_ids):
        return eval_set
    keep = np.sort(np.random.default_rng(seed).choice(len(eval_set.query_ids), max_queries, replace=False))
    return dataclasses.replace(eval_set, query_ids=take(eval_set.query_ids, keep),
                               query_texts=take(eval_set.query_texts, keep))


def rank(query_ids, query_embeddings, ordered_doc_ids: np.ndarray, corpus, top_k: int, *, mesh=None,
         approximate: bool = False, ignore_identical_ids: bool = False) -> Ranking:
    """The top_k of `corpus` (rows named by `ordered_doc_ids`) for each query.

    With `ignore_identical_ids` a query's own id is never retrieved (BEIR's rule).
    """
    k = min(top_k + int(ignore_identical_ids), len(ordered_doc_ids))
    scores, rows = retrieval.search(query_embeddings, corpus, k, mesh=mesh, approximate=approximate)
    return top_ranking(query_ids, ordered_doc_ids[rows], scores, top_k, ignore_identical_ids)


def top_ranking(query_ids, doc_ids: np.ndarray, scores: np.ndarray, top_k: int,
                ignore_identical_ids: bool = False) -> Ranking:
    """The first top_k of each query's ranked candidates (doc ids and scores [num_queries, k], best first).

    With `ignore_identical_ids` a query's own id is dropped first (BEIR's rule), so the
    candidates should hold top_k + 1 documents; a row left short is padded.
    """
    if ignore_identical_ids:
        keep = doc_ids != np.asarray(query_ids)[:, None]
        # Each row's kept documents first, in rank order, cut to top_k; a row short of them is padded.
        picked = np.argsort(~keep, axis=1, kind="stable")[:, :top_k]
        kept = np.take_along_axis(keep, picked, 1)
        doc_ids = np.where(kept, np.take_along_axis(doc_ids, picked, 1), "")
        scores = np.where(kept, np.take_along_axis(scores, picked, 1), -np.inf)
    return Ranking(list(query_ids), doc_ids[:, :top_k], scores[:, :top_k])


def _task_names(spec) -> list[str]:
    """Task names from a list, a comma-separated string of tasks, or a mixture name (its tasks).

    Names are looked up in seqio's registries: the tasks must be registered (`import tasks`).
    """
    import seqio  # imports TensorFlow: only when evaluating

    names = [name.strip() for name in spec.split(",") if name.strip()] if isinstance(spec, str) else list(spec)
    if len(names) == 1 and names[0] in seqio.MixtureRegistry.names():
        return sorted(t.name for t in seqio.get_mixture_or_task(names[0]).tasks)
    registered = seqio.TaskRegistry.names()
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, [*registered, *seqio.MixtureRegistry.names()], n=1)
            hint = (f"did you mean {close[0]!r}?" if close else "see tasks/ for gtr_jax's" if registered
                    else "no task is registered (import tasks)")
            raise UserError(f"unknown task or mixture {name!r}: {hint}")
    return names


def vocabulary_path(task: str, vocabulary: str | None = None, model_dir: str | None = None) -> str:
    """The explicit vocabulary, else the model directory's own, else the one the task tokenizes with."""
    from gtr_jax.data import pipeline  # imports TensorFlow (seqio)

    if vocabulary:
        return vocabulary
    if model_dir and epath.Path(model_dir_vocabulary(model_dir)).exists():
        return model_dir_vocabulary(model_dir)
    return pipeline.task_vocabulary_path(task)


def load_task(task: str, max_queries: int | None = None) -> EvalSet:
    """A registered evaluation task's eval set, cut to `max_queries` (see subset_queries)."""
    from gtr_jax.data import pipeline  # imports TensorFlow (seqio)

    return subset_queries(pipeline.load_eval_set(task), max_queries)


def _score(task: str, label: str, eval_set: EvalSet, ranking: Ranking, measures) -> dict:
    """{measure: mean} of the task's ranking; process 0 prints them in one line, `label` naming the ranker."""
    result = metrics.evaluate(eval_set.qrels, ranking.run(), measures)
    if jax.process_index() == 0:
        shown = ", ".join(f"{m} {result[m]:.4f}" for m in headline_measures(task) if m in result)
        print(f"{task} ({label}, {result['num_q']} queries, {len(eval_set.doc_ids)} documents): {shown}")
    return result


def _write_results(directory: str, rankings: dict, summary: dict):
    """metrics.json and one <task>.run per task (local or cloud paths), from process 0."""
    if jax.process_index() != 0:
        return
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for task, ranking in rankings.items():
        ranking.write(str(directory / f"{task}.run"))
    (directory / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")


@gin.configurable
def evaluate(
    *,
    model_dir: str = gin.REQUIRED,
    tasks=gin.REQUIRED,
    output_dir: str = gin.REQUIRED,
    step: int | None = None,
    top_k: int = 100,
    measures=metrics.DEFAULT_MEASURES,
    batch_size: int = 64,
    vocabulary: str | None = None,
    embeddings_dir: str | None = None,
    shard_size: int = 262144,
    approximate: bool = False,
    max_queries: int | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate a checkpoint on `tasks` (a task, "a,b", a mixture or a list); return {task: {measure: mean}}.

    Writes OUTPUT_DIR/metrics.json, OUTPUT_DIR/<task>.run (TREC) and TensorBoard scalars
    `<task>/<measure>` at the checkpoint's step under OUTPUT_DIR/tensorboard. With
    `embeddings_dir` (a local directory: search memory-maps it), corpus embeddings go to
    EMBEDDINGS_DIR/<task>/ in shards of `shard_size` rows and an interrupted run resumes;
    otherwise they are held in memory. OUTPUT_DIR may be a cloud path (gs://).
    """
    mesh = partitioning.make_mesh()
    model_config = checkpoints.load_model_config(model_dir)
    shardings = partitioning.param_shardings(checkpoints.boxed_param_shapes(model_config), mesh,
                                             partitioning.standard_logical_axis_rules())
    params, step = checkpoints.restore_params(model_dir, step, shardings=shardings)
    rankings, results = {}, {}
    for task in _task_names(tasks):
        eval_set = load_task(task, max_queries)
        tokenizer = shared_tokenizer(vocabulary_path(task, vocabulary, model_dir))
        encoder = TextEncoder(model_config, params, tokenizer, mesh)
        order = trec_order(eval_set.doc_ids)
        doc_max, query_max = model_config.max_length("doc"), model_config.max_length("query")
        if embeddings_dir:
            fingerprint = {"model_dir": model_dir, "step": step, "task": task}
            corpus = encoder.embed_to_shards(eval_set.doc_texts, "doc", doc_max, os.path.join(embeddings_dir, task),
                                             order=order, shard_size=shard_size, batch_size=batch_size,
                                             fingerprint=fingerprint, progress=progress)
        else:
            corpus = encoder.embed(take(eval_set.doc_texts, order), "doc", doc_max, batch_size, progress)
        queries = encoder.embed(eval_set.query_texts, "query", query_max, batch_size, progress)
        ordered_ids = np.asarray(take(eval_set.doc_ids, order))
        rankings[task] = rank(eval_set.query_ids, queries, ordered_ids, corpus, top_k, mesh=mesh,
                              approximate=approximate, ignore_identical_ids=task.startswith("beir_"))
        results[task] = _score(task, f"step {step}", eval_set, rankings[task], measures)
    summary = {"model_dir": model_dir, "step": step, "top_k": top_k, "approximate": approximate,
               "results": results}
    _write_results(output_dir, rankings, summary)
    if jax.process_index() == 0:
        from clu import metric_writers

        writer = metric_writers.create_default_writer(os.path.join(output_dir, "tensorboard"), asynchronous=False)
        writer.write_scalars(step, {f"{t}/{m}": v for t, values in results.items() for m, v in values.items()})
        writer.close()
    return results


@gin.configurable
def evaluate_bm25(
    *,
    tasks=gin.REQUIRED,
    output_dir: str = gin.REQUIRED,
    top_k: int = 100,
    measures=metrics.DEFAULT_MEASURES,
    max_queries: int | None = None,
    progress: bool = True,
) -> dict:
    """Rank `tasks` with BM25 (gtr_jax.eval.bm25) instead of a model; return {task: {measure: mean}}.

    Writes OUTPUT_DIR/metrics.json, with "ranker": "bm25" and the BM25 settings, and
    OUTPUT_DIR/<task>.run, as `evaluate` does (BM25 has no step to log TensorBoard scalars at).
    """
    # bm25s runs a JAX op when imported, which a multi-process run must not do before jax.distributed starts.
    from gtr_jax.eval import bm25

    rankings, results = {}, {}
    for task in _task_names(tasks):
        eval_set = load_task(task, max_queries)
        index = bm25.Bm25Index.build(eval_set.doc_ids, eval_set.doc_texts, progress)
        ignore_identical_ids = task.startswith("beir_")
        doc_ids, scores = index.search(eval_set.query_texts, top_k + int(ignore_identical_ids), progress)
        rankings[task] = top_ranking(eval_set.query_ids, doc_ids, scores, top_k, ignore_identical_ids)
        results[task] = _score(task, "bm25", eval_set, rankings[task], measures)
    summary = {"ranker": "bm25", "bm25": bm25.settings(), "top_k": top_k, "results": results}
    _write_results(output_dir, rankings, summary)
    return results


@gin.configurable
class RetrievalEvaluation:
    """The trainer's evaluator: corpus-level metrics of `tasks` every `train.eval_every` steps.

    The trainer builds it with the run's `model_config` and `mesh` (gin binds the rest).
    Texts are tokenized once, at construction; each evaluation embeds the (sub)set's
    queries and whole corpus with the current params, searches the top `top_k` and
    returns `<task>/<measure>` for `measures` (default: each task's headline_measures),
    which the trainer logs as eval/<task>/<measure>. `max_queries` evaluates a fixed
    random subset of each task's queries against the full corpus. With `output_dir`
    (e.g. %MODEL_DIR), run files and metrics.json go to OUTPUT_DIR/eval/step_<N>/.
    """

    def __init__(self, *, model_config: dual_encoder.ModelConfig, mesh, tasks=gin.REQUIRED, top_k: int = 100,
                 measures=None, max_queries: int | None = None, batch_size: int = 64, vocabulary: str | None = None,
                 output_dir: str | None = None):
        self.encoder = TextEncoder(model_config, None, None, mesh)
        self.mesh, self.top_k, self.batch_size, self.output_dir = mesh, top_k, batch_size, output_dir
        self.lengths = {tower: model_config.max_length(tower) for tower in ("query", "doc")}
        self.tasks = {}
        for task in _task_names(tasks):
            eval_set = load_task(task, max_queries)
            tokenizer = shared_tokenizer(vocabulary_path(task, vocabulary))
            order = trec_order(eval_set.doc_ids)
            self.tasks[task] = {
                "eval_set": eval_set,
                "ordered_ids": np.asarray(take(eval_set.doc_ids, order)),
                "query_tokens": tokenizer.encode(list(eval_set.query_texts), self.lengths["query"]),
                "doc_tokens": tokenizer.encode(take(eval_set.doc_texts, order), self.lengths["doc"]),
                "measures": tuple(measures or headline_measures(task)),
            }

    def __call__(self, params, step) -> dict:
        """{<task>/<measure>: mean} of the current params."""
        self.encoder.params = params
        out, rankings, results = {}, {}, {}
        for task, prepared in self.tasks.items():
            embed = self.encoder.embed_token_lists
            corpus = embed(prepared["doc_tokens"], "doc", self.lengths["doc"], self.batch_size)
            queries = embed(prepared["query_tokens"], "query", self.lengths["query"], self.batch_size)
            eval_set = prepared["eval_set"]
            rankings[task] = rank(eval_set.query_ids, queries, prepared["ordered_ids"], corpus, self.top_k,
                                  mesh=self.mesh, ignore_identical_ids=task.startswith("beir_"))
            results[task] = metrics.evaluate(eval_set.qrels, rankings[task].run(), prepared["measures"])
            out.update({f"{task}/{m}": results[task][m] for m in prepared["measures"]})
        if self.output_dir:
            summary = {"step": int(step), "top_k": self.top_k, "results": results}
            _write_results(os.path.join(self.output_dir, "eval", f"step_{int(step)}"), rankings, summary)
        return out
