"""Fresh models of both quality-benchmark trainers, compared as distributions over seeds.

    python bench/bench_init.py --task=demo --preset=issue --std_seeds=4 --geometry_seeds=16

At one of bench/bench_quality.py's presets, gtr_jax's init (the model's jitted `init`, as
`gtr-jax train` draws it) against the peer's (bench/quality_peer.build_model: Hugging
Face's T5 init and torch.nn.Linear's):

  tensors   each encoder tensor's standard deviation over the values of STD_SEEDS inits
            of each, their ratio, and that ratio's distance from 1 in standard errors
            (the std of n values drawn from one distribution has a relative standard error
            of about 1/sqrt(2n)); the projection is listed too, though its init differs
            by design (a scale the training cannot see: README § From scratch);
  geometry  over GEOMETRY_SEEDS fresh models of each, the embeddings of 256 fixed training
            pairs: the mean query-query cosine, the mean query-document cosine of the
            pairs, and the in-batch softmax loss at the preset's τ on four 64-pair batches;
            the mean ± standard error over seeds and the difference in standard errors.

Tests hold each initializer to its claimed distribution (tests/test_init.py); this checks,
at a benchmark's model size, that the two trainers' inits agree as a whole. Writes
bench/results/init_<task>_<preset>.json (`--results`) and prints both tables.
"""

import argparse
import json
import math
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# bench_quality sets, on import, the environment the peer and JAX need (no TensorFlow or
# Flax half in transformers, CPU only), before anything here imports them.
import bench_quality  # noqa: E402
from bench_quality import ROOT, peer_model, quality_peer  # noqa: E402

GEOMETRY_PAIRS, GEOMETRY_BATCH = 256, 64


def gtr_jax_model(preset, task):
    """gtr_jax's SDE dual encoder of the preset, and a jitted init of it from an integer seed."""
    import jax
    import jax.numpy as jnp
    from flax.core import meta

    from gtr_jax.model import dual_encoder

    config = bench_quality.encoder_config(preset, task)
    model = dual_encoder.ModelConfig(config, "sde", embed_dim=preset.embed_dim).build()
    tokens = jnp.ones((1, 2), jnp.int32)
    init = jax.jit(lambda key: meta.unbox(model.init(key, tokens, tokens)["params"]))
    return model, lambda seed: init(jax.random.key(seed))


def tensor_stds(preset, task, seeds: int, workdir: str) -> list[dict]:
    """Per tensor: both trainers' std over the values of SEEDS inits, ratio, its SE distance from 1."""
    from flax.traverse_util import flatten_dict

    from gtr_jax.interop import hf_weights

    _, init = gtr_jax_model(preset, task)
    ours, theirs = {}, {}
    for seed in range(seeds):
        for path, value in flatten_dict(init(seed)).items():
            ours.setdefault(path, []).append(np.asarray(value, np.float64).ravel())
        peer = peer_model(preset, task, seed, os.path.join(workdir, f"peer_seed{seed}"))
        for name, value in peer.state_dict().items():
            theirs.setdefault(name, []).append(value.numpy().astype(np.float64).ravel())
    pairs = [(("encoder",) + path, hf_name)
             for path, (hf_name, _) in hf_weights.hf_tensor_names(bench_quality.encoder_config(preset, task)).items()]
    # The projection: our Dense kernel, the peer's bias-free torch.nn.Linear inside its Dense module.
    pairs.append((("projection", "dense", "kernel"), "linear.weight"))
    rows = []
    for path, hf_name in pairs:
        (name,) = [n for n in theirs if n.endswith(hf_name)]
        a, b = np.concatenate(ours[path]), np.concatenate(theirs[name])
        row = {"tensor": "/".join(path), "peer_tensor": name, "values": int(a.size), "gtr_jax_mean": a.mean(),
               "peer_mean": b.mean(), "gtr_jax_std": a.std(), "peer_std": b.std(), "ratio": None,
               "standard_errors": None}
        if b.std() > 0:  # the norms' scales start constant (ones): compared by their means alone
            row["ratio"] = a.std() / b.std()
            row["standard_errors"] = (row["ratio"] - 1) / math.sqrt(1 / (2 * a.size) + 1 / (2 * b.size))
        rows.append(row)
    return rows


def geometry(query_emb: np.ndarray, doc_emb: np.ndarray, temperature: float) -> dict:
    """Mean query-query cosine, mean cosine of the pairs, mean in-batch loss over 64-pair batches."""
    n = len(query_emb)
    query_cosines = query_emb @ query_emb.T
    losses = []
    for start in range(0, n, GEOMETRY_BATCH):
        logits = query_emb[start : start + GEOMETRY_BATCH] @ doc_emb[start : start + GEOMETRY_BATCH].T / temperature
        logits = logits - logits.max(axis=1, keepdims=True)
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses.append(-np.diag(log_softmax).mean())
    return {"query_query_cosine": float((query_cosines.sum() - np.trace(query_cosines)) / (n * n - n)),
            "pair_cosine": float(np.mean(np.sum(query_emb * doc_emb, axis=1))),
            "in_batch_loss": float(np.mean(losses))}


def embedding_geometry(preset, task, seeds: int, workdir: str) -> dict:
    """{system: [geometry of each seed's fresh model]} on GEOMETRY_PAIRS fixed training pairs."""
    import jax

    from gtr_jax.data.vocab import shared_tokenizer

    tokenizer = shared_tokenizer(task.vocabulary)
    pairs = task.pairs
    rows = np.random.default_rng(0).permutation(len(pairs.query_rows))[:GEOMETRY_PAIRS]
    queries = bench_quality.token_arrays(tokenizer, [pairs.queries.texts[i] for i in pairs.query_rows[rows]],
                                         preset.query_length)
    docs = bench_quality.token_arrays(tokenizer, [pairs.docs.texts[i] for i in pairs.doc_rows[rows]],
                                      preset.doc_length)
    model, init = gtr_jax_model(preset, task)
    encode = jax.jit(lambda params, tokens, tower: model.apply({"params": params}, tokens, tower, method="encode"),
                     static_argnums=2)
    out = {"gtr_jax": [], "peer": []}
    for seed in range(seeds):
        params = init(seed)
        out["gtr_jax"].append(geometry(np.asarray(encode(params, queries, "query"), np.float64),
                                       np.asarray(encode(params, docs, "doc"), np.float64), preset.temperature))
        peer = peer_model(preset, task, seed, os.path.join(workdir, f"peer_seed{seed}"))
        out["peer"].append(geometry(quality_peer.encode(peer, queries).astype(np.float64),
                                    quality_peer.encode(peer, docs).astype(np.float64), preset.temperature))
    return out


def compare(per_seed: dict) -> list[dict]:
    """Per measure: mean ± standard error over seeds of each system, and their difference in SEs."""
    rows = []
    for measure in per_seed["gtr_jax"][0]:
        row = {"measure": measure}
        for system, values in per_seed.items():
            values = [g[measure] for g in values]
            row[system] = statistics.mean(values)
            row[system + "_se"] = statistics.stdev(values) / math.sqrt(len(values))
        row["standard_errors"] = (row["gtr_jax"] - row["peer"]) / math.hypot(row["gtr_jax_se"], row["peer_se"])
        rows.append(row)
    return rows


def main(argv=None):
    """Compare the two trainers' fresh models; print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("demo", "pydocs"), default="demo")
    parser.add_argument("--preset", choices=sorted(bench_quality.PRESETS), default="issue")
    parser.add_argument("--std_seeds", type=int, default=4)
    parser.add_argument("--geometry_seeds", type=int, default=16)
    parser.add_argument("--workdir", default="bench_init_out", help="the peer's model directories, pydocs data")
    parser.add_argument("--results", help="results JSON (default: bench/results/init_<task>_<preset>.json)")
    args = parser.parse_args(argv)
    preset = bench_quality.PRESETS[args.preset]
    workdir = os.path.abspath(args.workdir)
    task = bench_quality.load_task(args.task, workdir)
    tensors = tensor_stds(preset, task, args.std_seeds, workdir)
    print(f"{args.task}, preset {args.preset}: per-tensor std over {args.std_seeds} inits of each")
    print("| tensor | values | gtr_jax mean, std | peer mean, std | std ratio | standard errors from 1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in tensors:
        ratio = "— | —" if r["ratio"] is None else f"{r['ratio']:.4f} | {r['standard_errors']:+.1f}"
        print(f"| {r['tensor']} | {r['values']} | {r['gtr_jax_mean']:.4f}, {r['gtr_jax_std']:.5f} | "
              f"{r['peer_mean']:.4f}, {r['peer_std']:.5f} | {ratio} |")
    per_seed = embedding_geometry(preset, task, args.geometry_seeds, workdir)
    summary = compare(per_seed)
    print(f"\nfresh-model embeddings of {GEOMETRY_PAIRS} training pairs, {args.geometry_seeds} seeds of each "
          f"(mean ± standard error)")
    print("| measure | gtr_jax | peer | difference in standard errors |")
    print("| --- | --- | --- | --- |")
    for r in summary:
        print(f"| {r['measure']} | {r['gtr_jax']:.4f} ± {r['gtr_jax_se']:.4f} | "
              f"{r['peer']:.4f} ± {r['peer_se']:.4f} | {r['standard_errors']:+.1f} |")
    results_path = args.results or os.path.join(ROOT, "bench", "results", f"init_{args.task}_{args.preset}.json")
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    with open(results_path, "w") as f:
        json.dump({"task": args.task, "preset": args.preset, "std_seeds": args.std_seeds, "tensors": tensors,
                   "geometry_seeds": args.geometry_seeds, "geometry": summary, "geometry_per_seed": per_seed}, f,
                  indent=1)
    print(f"results: {results_path}")


if __name__ == "__main__":
    main()
