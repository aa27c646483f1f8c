"""The SamToNe paper's §4 embedding diagnostics for one or two checkpoints, as PNGs and a report.

For an evaluation task, each checkpoint's query and passage embeddings give three
figures, one panel per checkpoint side by side (e.g. in-batch softmax vs SamToNe):
  top1_cosine.png      histogram of cos(query, its top-1 passage in the whole corpus),
                       with cos(query, its relevant passage) for reference;
  pair_similarity.png  histograms of s(q_i, q_j) and s(q_i, p_j) over random pairs
                       i ≠ j, p_j the relevant passage of query j: how far apart the
                       query tower spreads queries compared with passages;
  tsne.png             a 2-D t-SNE map of the same sample of queries and their passages,
                       coloured by tower: SamToNe's overlap of the two embedding spaces.
report.md lists the figures and summary statistics. Each PNG stores its panel titles
(tEXt chunk "Panels", a JSON list), so a reader can check what it holds.
"""

import json
import os

import numpy as np

from gtr_jax.eval import evaluation, retrieval
from gtr_jax.eval.encoding import load_text_encoder
from gtr_jax.errors import UserError
from gtr_jax.data.examples import EvalSet

FIGURES = ("top1_cosine", "pair_similarity", "tsne")
TOWER_COLOURS = {"query": "tab:blue", "passage": "tab:orange"}
# figure: (panel title, what is counted, ((diagnostics key, legend), ...)) of the two histogram figures.
HISTOGRAMS = {
    "top1_cosine": ("cos(query, top-1)", "queries", (("top1", "top-1 passage"), ("relevant", "relevant passage"))),
    "pair_similarity": ("random pairs i ≠ j", "pairs",
                        (("query_query", "s(q_i, q_j)"), ("query_passage", "s(q_i, p_j)"))),
}


def relevant_passages(eval_set: EvalSet) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, corpus rows) pairing each query that has a relevant passage with its most relevant one."""
    doc_row = {doc_id: row for row, doc_id in enumerate(eval_set.doc_ids)}
    query_rows, doc_rows = [], []
    for row, qid in enumerate(eval_set.query_ids):
        judged = [(level, doc) for doc, level in eval_set.qrels.get(qid, {}).items() if level > 0 and doc in doc_row]
        if judged:
            query_rows.append(row)
            doc_rows.append(doc_row[max(judged)[1]])
    if not query_rows:
        raise UserError("the task has no query with a relevant passage in its corpus")
    return np.asarray(query_rows), np.asarray(doc_rows)


def diagnostics(encoder, eval_set: EvalSet, *, num_pairs: int, tsne_rows: np.ndarray, seed: int,
                batch_size: int = 64, progress: bool = True) -> dict:
    """One checkpoint's similarity samples and t-SNE coordinates (see the module doc)."""
    from sklearn.manifold import TSNE  # slow to import: only when analyzing, not at CLI start-up

    config = encoder.model_config
    queries = encoder.embed(eval_set.query_texts, "query", config.max_length("query"), batch_size, progress)
    corpus = encoder.embed(eval_set.doc_texts, "doc", config.max_length("doc"), batch_size, progress)
    top1, _ = retrieval.search(queries, corpus, 1)
    query_rows, doc_rows = relevant_passages(eval_set)
    q, p = queries[query_rows], corpus[doc_rows]
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(q), num_pairs)
    j = (i + rng.integers(1, max(len(q), 2), num_pairs)) % len(q)  # j ≠ i whenever there are two queries
    sample_q, sample_p = q[tsne_rows], p[tsne_rows]
    points = np.concatenate([sample_q, sample_p]).astype(np.float64)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (len(points) - 1) / 3), init="pca", random_state=seed)
    return {
        "top1": top1[:, 0],
        "relevant": np.sum(q * p, axis=1),
        "query_query": np.sum(q[i] * q[j], axis=1),
        "query_passage": np.sum(q[i] * p[j], axis=1),
        "tsne": tsne.fit_transform(points),
        "tsne_queries": len(sample_q),
    }


def plot(results: dict, output_dir: str) -> dict:
    """Write the three figures for {label: diagnostics}; return {figure: path}."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    def panels(height, **options):
        return plt.subplots(1, len(labels), figsize=(5 * len(labels), height), squeeze=False, layout="constrained",
                            **options)

    def save(figure, path):
        titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
        figure.savefig(path, dpi=100, metadata={"Panels": json.dumps(titles)})
        plt.close(figure)

    labels = list(results)
    paths = {name: os.path.join(output_dir, f"{name}.png") for name in FIGURES}
    bins = np.linspace(-1, 1, 81)
    for name, (title, unit, series) in HISTOGRAMS.items():
        figure, axes = panels(4, sharex=True)
        for ax, label in zip(axes[0], labels):
            for key, legend in series:
                ax.hist(results[label][key], bins=bins, alpha=0.6, label=legend)
            ax.set(title=f"{label}: {title}", xlabel="cosine", ylabel=unit)
            ax.legend()
        save(figure, paths[name])

    figure, axes = panels(5)
    for ax, label in zip(axes[0], labels):
        xy, n = results[label]["tsne"], results[label]["tsne_queries"]
        ax.scatter(*xy[:n].T, s=8, c=TOWER_COLOURS["query"], label="query")
        ax.scatter(*xy[n:].T, s=8, c=TOWER_COLOURS["passage"], label="passage")
        ax.set(title=f"{label}: t-SNE map by tower", xticks=[], yticks=[])
        ax.legend()
    save(figure, paths["tsne"])
    return paths


def write_report(results: dict, paths: dict, output_dir: str, task: str, model_dirs: dict) -> str:
    """report.md: the checkpoints, summary statistics and the figures."""
    lines = [f"# Embedding diagnostics on {task}", "", "| checkpoint | model dir | mean cos(q, top-1) | "
             "mean cos(q, relevant) | mean s(q_i, q_j) | mean s(q_i, p_j) |", "|---|---|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {model_dirs[label]} | {r['top1'].mean():.4f} | {r['relevant'].mean():.4f} | "
                     f"{r['query_query'].mean():.4f} | {r['query_passage'].mean():.4f} |")
    lines.append("")
    lines += [f"![{name}]({os.path.basename(path)})" for name, path in paths.items()]
    report = os.path.join(output_dir, "report.md")
    with open(report, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return report


def analyze(model_dirs: list[str], labels: list[str], task: str, output_dir: str, *, step: int | None = None,
            max_queries: int | None = 1000, num_pairs: int = 20000, tsne_points: int = 300, seed: int = 0,
            batch_size: int = 64, progress: bool = True) -> dict:
    """Diagnostics of each checkpoint on `task` (a fixed query sample, the whole corpus); return {figure: path}.

    The task must be registered (`import tasks`), as `gtr-jax analyze` does.
    """
    if len(labels) != len(model_dirs) or len(set(labels)) != len(labels):
        raise UserError("give one distinct --label per --model_dir")
    eval_set = evaluation.load_task(task, max_queries)
    rows = np.arange(len(relevant_passages(eval_set)[0]))
    # The same queries in every panel, so that maps and histograms compare like with like.
    tsne_rows = np.sort(np.random.default_rng(seed).permutation(rows)[:tsne_points])
    results = {}
    for label, model_dir in zip(labels, model_dirs):
        encoder = load_text_encoder(model_dir, step, evaluation.vocabulary_path(task, model_dir=model_dir))
        results[label] = diagnostics(encoder, eval_set, num_pairs=num_pairs, tsne_rows=tsne_rows, seed=seed,
                                     batch_size=batch_size, progress=progress)
    os.makedirs(output_dir, exist_ok=True)
    paths = plot(results, output_dir)
    paths["report"] = write_report(results, paths, output_dir, task, dict(zip(labels, model_dirs)))
    return paths
