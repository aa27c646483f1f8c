"""Benchmark (not a test): exact top-k search against faiss, corpus encoding against sentence-transformers.

search   top-100 of 1,000 queries over 200,000 × 768 float32 unit vectors (seeded random):
         `retrieval.search` on `--cpu_devices` JAX CPU devices (XLA's default is one) vs
         faiss-cpu `IndexFlatIP` (exact inner product), in the same process on the same
         arrays. The two must return the same documents: equal scores, and equal ids
         wherever neighbouring scores differ by more than float noise.
encode   passages/s of a T5-small-shaped GTR model (T5.1.1 small encoder: d_model 512,
         8 layers, 6 heads, d_ff 1024, gated-GELU; mean pooling; 768-d projection) with
         seeded random weights, written as a sentence-transformers directory and imported
         with `gtr-jax import`, so both sides run the same weights: `TextEncoder.embed` vs
         `SentenceTransformer.encode` on the same passages (the demo's stdlib docstrings),
         same batch size and max length, float32. Embeddings must agree to 1e-4.
Reported: the first call (compilation included) and the median of `--repeats` more; the
contestants take turns, so that other work on a shared machine weighs on both alike.

    python bench/bench_retrieval.py [--cpu_devices 1] [--corpus 200000] [--queries 1000] [--k 100]
                                    [--passages 512] [--max_length 256] [--batch_size 64] [--repeats 2]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# transformers must not load its TensorFlow or Flax halves: Keras 3 breaks the former, jax 0.10 the latter.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")


def interleaved(fns: dict, repeats: int) -> dict:
    """{name: (first run's seconds, median of `repeats` more, last result)}, the runs of all fns interleaved.

    Taking turns spreads the load of a shared machine evenly over the contestants.
    """
    first, times, results = {}, {name: [] for name in fns}, {}
    for name, fn in fns.items():
        start = time.perf_counter()
        results[name] = fn()
        first[name] = time.perf_counter() - start
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (first[name], statistics.median(times[name]) if repeats else first[name], results[name])
            for name in fns}


def assert_same_neighbours(ours, theirs, tolerance=1e-5):
    """Same scores; same ids except among near-ties (scores within `tolerance`), the k-th place included.

    Two exact searches may order scores closer than float rounding differently, and a
    (k+1)-th document as close to the k-th may take its place.
    """
    (our_scores, our_ids), (their_scores, their_ids) = ours, theirs
    np.testing.assert_allclose(our_scores, their_scores, atol=tolerance, rtol=0)
    gaps = np.abs(np.diff(their_scores, axis=1)) < tolerance
    near_tie = np.zeros_like(their_ids, bool)
    near_tie[:, 1:] |= gaps
    near_tie[:, :-1] |= gaps
    near_tie[:, -1] = True  # its rival, the (k+1)-th, is not in the lists
    differing = our_ids != their_ids
    assert not (differing & ~near_tie).any(), f"{(differing & ~near_tie).sum()} ids differ outside near-ties"
    return int(differing.sum())


def bench_search(args):
    import faiss
    import jax

    from gtr_jax.eval import retrieval

    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(args.corpus, 768)).astype(np.float32)
    queries = rng.normal(size=(args.queries, 768)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    index = faiss.IndexFlatIP(768)
    index.add(corpus)
    search_options = {name: getattr(args, name) for name in ("chunk_size", "query_batch_size") if getattr(args, name)}
    timings = interleaved({
        "faiss": lambda: index.search(queries, args.k),
        "ours": lambda: retrieval.search(queries, corpus, args.k, **search_options),
    }, args.repeats)
    (faiss_first, faiss_time, theirs), (ours_first, ours_time, ours) = timings["faiss"], timings["ours"]
    swapped = assert_same_neighbours(ours, theirs)
    print(f"search: top-{args.k} of {args.queries} queries over {args.corpus} x 768 float32, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), faiss {faiss.__version__} "
          f"with {faiss.omp_get_max_threads()} threads")
    print(f"  {'':<22}{'median s':>10}{'first s':>10}{'queries/s':>12}")
    print(f"  {'gtr_jax search':<22}{ours_time:>10.3f}{ours_first:>10.3f}{args.queries / ours_time:>12.1f}")
    print(f"  {'faiss IndexFlatIP':<22}{faiss_time:>10.3f}{faiss_first:>10.3f}{args.queries / faiss_time:>12.1f}")
    print(f"  speed-up vs faiss: {faiss_time / ours_time:.2f}x; same results asserted "
          f"({swapped} of {ours[1].size} ids swapped within near-ties < 1e-5)")


def write_t5_small_st(directory, vocab_path, max_length):
    """A GTR-style sentence-transformers model of T5.1.1-small shape with seeded random weights."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0)
    transformer_dir = os.path.join(directory, "_transformer")
    T5EncoderModel(config).eval().save_pretrained(transformer_dir, safe_serialization=True)
    T5Tokenizer(vocab_path, legacy=True).save_pretrained(transformer_dir)
    transformer = modules.Transformer(transformer_dir, max_seq_length=max_length)
    dense = modules.Dense(512, 768, bias=False, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[transformer, modules.Pooling(512, "mean"), dense, modules.Normalize()])
    model.save(directory, safe_serialization=True)


def bench_encode(args):
    import torch
    from sentence_transformers import SentenceTransformer

    from gtr_jax.data.sources import demo
    from gtr_jax.eval import encoding

    passages = [passage for _, _, passage, _ in demo.all_pairs()[: args.passages]]
    with tempfile.TemporaryDirectory() as tmp:
        st_dir, model_dir = os.path.join(tmp, "st"), os.path.join(tmp, "model")
        write_t5_small_st(st_dir, demo.DEMO_VOCABULARY, args.max_length)
        subprocess.run([sys.executable, "-m", "gtr_jax", "import", "--from=sentence-transformers", st_dir,
                        "--output", model_dir], check=True, capture_output=True)
        st = SentenceTransformer(st_dir, device="cpu")
        encoder = encoding.load_text_encoder(model_dir)
        timings = interleaved({
            "st": lambda: st.encode(passages, batch_size=args.batch_size, normalize_embeddings=True),
            "ours": lambda: encoder.embed(passages, "doc", args.max_length, args.batch_size, progress=False),
        }, args.repeats)
    (st_first, st_time, theirs), (ours_first, ours_time, ours) = timings["st"], timings["ours"]
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    tokens = sum(min(len(t), args.max_length) for t in encoder.tokenizer.encode(passages, args.max_length))
    print(f"encode: {len(passages)} passages ({tokens} tokens, max length {args.max_length}), batch "
          f"{args.batch_size}, T5.1.1-small-shaped GTR, float32, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads")
    print(f"  {'':<22}{'median s':>10}{'first s':>10}{'passages/s':>12}")
    print(f"  {'gtr_jax TextEncoder':<22}{ours_time:>10.3f}{ours_first:>10.3f}{len(passages) / ours_time:>12.1f}")
    print(f"  {'sentence-transformers':<22}{st_time:>10.3f}{st_first:>10.3f}{len(passages) / st_time:>12.1f}")
    print(f"  speed-up vs sentence-transformers: {st_time / ours_time:.2f}x "
          f"(first call: {st_first / ours_first:.2f}x); embeddings agree to 1e-4")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--passages", type=int, default=512)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunk_size", type=int, help="retrieval.search's corpus rows per step (default: its own)")
    parser.add_argument("--query_batch_size", type=int, help="retrieval.search's queries per call (default: its own)")
    parser.add_argument("--cpu_devices", type=int, default=1,
                        help="JAX CPU devices (XLA's default is 1; one per core lets search run top_k on every core)")
    parser.add_argument("--only", choices=("search", "encode"), help="run one of the two")
    args = parser.parse_args()
    # Read by XLA when jax initializes, which the benchmarks below do on first use.
    flag = f"--xla_force_host_platform_device_count={args.cpu_devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    if args.only != "encode":
        bench_search(args)
    if args.only != "search":
        bench_encode(args)


if __name__ == "__main__":
    main()
