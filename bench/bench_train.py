"""Train-step benchmark: gtr_jax vs sentence-transformers on the same T5.1.1-small SDE, same run.

Measures, on this machine's CPU (one XLA device using every core, as a real run would):
  * examples/s and tokens/s of a full train step (forward, backward, optimizer) at batch
    32, lengths 64/128, for gtr_jax and for sentence-transformers' MultipleNegativesRanking
    loss with query-side same-tower negatives (SamToNe) on PyTorch, and their ratio. gtr_jax
    runs as `gtr-jax` does, with freed host memory retained (gtr_jax.train.host_memory); the peer
    runs in fresh processes with and without that policy, and the faster is the reference;
  * MFU: model FLOPs per step / step time / the jnp.dot peak measured in this run, in the
    compute dtype (--dtype bfloat16: bfloat16 operands, float32 accumulation; the peer then
    trains under torch.autocast to bfloat16, which is how sentence-transformers does bf16);
  * what limits it: the seconds the step's matmuls take alone, one after another (each
    dot of its program timed on its own: the rest of the step is everything else), and
    GFLOP/s of one layer's attention-shaped batched matmul (batch x heads products of
    [doc length, d_kv] @ [d_kv, doc length]) in XLA and in PyTorch;
  * memory of one step: GradCache at global batch 4096 vs the plain step at the largest
    batch that fits, from XLA's compiled memory analysis (arguments + outputs +
    temporaries of the program: what the step needs at its peak, without running it);
    with --rss, also the peak RSS of a process that runs one such step (the GradCache
    step at 4096 takes ~15 minutes here).

Run: .venv/bin/python bench/bench_train.py [--steps 5] [--dtype bfloat16] [--skip_peer] [--rss]
"""

import argparse
import collections
import contextlib
import dataclasses
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from gtr_jax.train import host_memory  # noqa: E402

# What `gtr-jax` does before JAX starts (see host_memory); the peer's child processes set
# it or not themselves. GTR_JAX_KEEP_DEFAULT_MALLOC=1 measures gtr_jax with glibc's defaults.
HOST_MEMORY_RETAINED = host_memory.retain_freed_memory_if_jax_runs_on_cpu()

import jax  # noqa: E402
import jax.extend.core  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.core import meta  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from gtr_jax import losses  # noqa: E402
from gtr_jax.model import dual_encoder, t5  # noqa: E402
from gtr_jax.train import partitioning, train_step  # noqa: E402

# SamToNe on the query side, as in the peer's directions=("query_to_doc", "query_to_query").
LOSS = losses.LossConfig(same_tower="query")

BATCH, QUERY_LENGTH, DOC_LENGTH, EMBED = 32, 64, 128, 768
SMALL = t5.T5Config(vocab_size=32128, d_model=512, num_layers=8, num_heads=6, d_kv=64, d_ff=1024, dropout_rate=0.1)
MEMORY_LIMIT = 20 * 2**30  # what a step may use on this 24 GiB machine
WARMUP_STEPS = 2  # untimed: compilation, then the step that first grows the host heap


def matmul_peak_gflops(dtype="float32", size=2048, repeats=10) -> float:
    """Best GFLOP/s of a jitted size x size matmul of `dtype` operands, float32 accumulation."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    return 2 * size**3 / _best_seconds(lambda: dot(a, a).block_until_ready(), repeats) / 1e9


ATTENTION_BMM = (BATCH * SMALL.num_heads, DOC_LENGTH, SMALL.d_kv, DOC_LENGTH)  # (products, m, k, n)
ATTENTION_BMM_FLOPS = 2 * int(np.prod(ATTENTION_BMM))


def attention_bmm_gflops_jax(repeats=20) -> float:
    """Best float32 GFLOP/s of XLA's batched matmul on the attention logits' shapes."""
    products, m, k, n = ATTENTION_BMM
    rng = np.random.default_rng(0)
    lhs, rhs = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((products, m, k), (products, k, n)))
    matmul = jax.jit(jnp.matmul)
    return ATTENTION_BMM_FLOPS / _best_seconds(lambda: matmul(lhs, rhs).block_until_ready(), repeats) / 1e9


def attention_bmm_gflops_torch(repeats=20) -> float:
    """The same batched matmul in PyTorch (called in the peer's process)."""
    import torch

    products, m, k, n = ATTENTION_BMM
    lhs, rhs = torch.randn(products, m, k), torch.randn(products, k, n)
    return ATTENTION_BMM_FLOPS / _best_seconds(lambda: torch.bmm(lhs, rhs), repeats) / 1e9


def _best_seconds(fn, repeats: int) -> float:
    """Fastest of `repeats` timed calls of `fn`, after one untimed call (compilation, first touch)."""
    fn()
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def encoder_flops(config: t5.T5Config, batch: int, length: int) -> float:
    """Forward matmul FLOPs of the encoder + projection over `batch` sequences of `length`."""
    inner = config.num_heads * config.d_kv
    ffn = (3 if config.feed_forward == "gated-gelu" else 2) * config.d_model * config.d_ff
    per_token = 2 * (4 * config.d_model * inner + ffn) + 2 * 2 * length * inner  # weights + QK^T and AV
    return batch * (config.num_layers * length * per_token + 2 * config.d_model * EMBED)


def model_flops_per_step(config, batch) -> float:
    """Forward + backward (2x forward) FLOPs of both towers and the B x B similarity matmuls."""
    forward = encoder_flops(config, batch, QUERY_LENGTH) + encoder_flops(config, batch, DOC_LENGTH)
    forward += 2 * 2 * batch * batch * EMBED  # q·p and q·q logits
    return 3 * forward


def random_batch(batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tokens = lambda length: np.concatenate(
        [rng.integers(3, 32000, (batch, length - 1)), np.ones((batch, 1))], axis=1).astype(np.int32)
    ids = np.arange(batch, dtype=np.int32)
    return {"query_tokens": tokens(QUERY_LENGTH), "doc_tokens": tokens(DOC_LENGTH), "query_ids": ids, "doc_ids": ids}


def jax_step(batch_size: int, chunk: int | None):
    """(jitted update, state, batch) of the T5.1.1-small SDE with SamToNe on one device."""
    model = dual_encoder.DualEncoder(SMALL, "sde", EMBED)
    mesh = partitioning.make_mesh((1, 1), num_devices=1)
    tx = optax.adafactor(1e-3)
    batch = random_batch(batch_size)
    tokens = jnp.ones((1, 2), jnp.int32)
    params = jax.jit(lambda k: meta.unbox(model.init(k, tokens, tokens)["params"]))(jax.random.key(0))
    state = train_step.TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init((params, {})))
    update = train_step.make_update(model, tx, mesh, loss=LOSS, temperature=0.01, dropout_seed=0,
                                    grad_cache_chunk_size=chunk)
    # Inputs and outputs on the same mesh sharding, so that the second step does not recompile.
    replicated = NamedSharding(mesh, PartitionSpec())
    step = jax.jit(update, donate_argnums=0, out_shardings=replicated)
    return step, jax.device_put(state, replicated), jax.device_put(batch, replicated), mesh


def bench_jax(steps: int) -> tuple[float, float]:
    """Median seconds per train step of gtr_jax, and the seconds its matmuls take alone
    (`matmul_floor_seconds`)."""
    update, state, batch, mesh = jax_step(BATCH, None)
    times = []
    with jax.set_mesh(mesh):
        floor = matmul_floor_seconds(jax.make_jaxpr(update)(state, batch).jaxpr)
        for _ in range(WARMUP_STEPS):
            state, metrics = update(state, batch)
            jax.block_until_ready(metrics)
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = update(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    return statistics.median(times), floor


def matmul_floor_seconds(step_jaxpr, repeats: int = 10) -> float:
    """Seconds the step's matmuls take run alone, one after another: each dot_general of the
    step (scan bodies once per iteration) timed on its own, on every core, with operands
    of its shapes, dtypes and dimension numbers. The rest of a step is its elementwise,
    reduction and layout work, and the time XLA's overlap of ops does not win back."""
    counts = collections.Counter()
    _count_dots(step_jaxpr, 1, counts)
    rng = np.random.default_rng(0)
    total = 0.0
    for (lhs, rhs, dimensions, result_dtype), count in counts.items():
        operands = [jnp.asarray(rng.standard_normal(aval.shape), aval.dtype) for aval in (lhs, rhs)]
        dot = jax.jit(functools.partial(jax.lax.dot_general, dimension_numbers=dimensions,
                                        preferred_element_type=result_dtype))
        total += count * _best_seconds(lambda: dot(*operands).block_until_ready(), repeats)
    return total


def _count_dots(jaxpr, times: int, counts: collections.Counter):
    """Add to `counts` each dot_general of `jaxpr`, keyed by what it computes, `times` over
    (the number of times `jaxpr` itself runs per step)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (var.aval for var in eqn.invars)
            counts[(lhs, rhs, eqn.params["dimension_numbers"], eqn.params["preferred_element_type"])] += times
        repeats = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            _count_dots(sub, times * repeats, counts)


def bench_sentence_transformers(steps: int, dtype: str = "float32") -> float:
    """Median seconds per train step of sentence-transformers (PyTorch) on the same shapes;
    in bfloat16 under torch.autocast (what its trainer's `bf16=True` does)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer import modules
    from transformers import T5Config, T5EncoderModel
    from transformers.optimization import Adafactor

    config = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                      feed_forward_proj="gated-gelu", dropout_rate=0.1)
    directory = "/tmp/bench_train_t5_small"
    T5EncoderModel(config).save_pretrained(directory)
    transformer = _transformer_without_tokenizer(directory)
    dense = modules.Dense(512, EMBED, bias=False, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[transformer, modules.Pooling(512, "mean"), dense, modules.Normalize()]).train()
    loss = MultipleNegativesRankingLoss(model=model, scale=100.0, directions=("query_to_doc", "query_to_query"))
    optimizer = Adafactor(model.parameters(), lr=1e-3, relative_step=False, scale_parameter=True, warmup_init=False)
    batch = {k: torch.from_numpy(v.astype(np.int64)) for k, v in random_batch(BATCH).items()}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext():
            loss_value = forward()
        optimizer.zero_grad()
        loss_value.backward()
        optimizer.step()

    def forward():
        query = model({"input_ids": batch["query_tokens"], "attention_mask": batch["query_tokens"] != 0})
        doc = model({"input_ids": batch["doc_tokens"], "attention_mask": batch["doc_tokens"] != 0})
        return loss.compute_loss_from_embeddings([query["sentence_embedding"], doc["sentence_embedding"]], labels=None)

    for _ in range(WARMUP_STEPS):
        step()
    return statistics.median(_timed(step) for _ in range(steps))


def _transformer_without_tokenizer(directory):
    """A sentence-transformers Transformer module over the saved T5 (inputs are pre-tokenized)."""
    from sentence_transformers.sentence_transformer import modules
    from transformers import T5TokenizerFast

    # Any T5 tokenizer satisfies the constructor; the benchmark feeds token ids directly.
    tokenizer_dir = os.path.join(directory, "tokenizer")
    if not os.path.exists(tokenizer_dir):
        import sys

        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
        import hf_models

        spm = hf_models.train_sentencepiece(os.path.join(directory, "spiece.model"))
        T5TokenizerFast(vocab_file=spm).save_pretrained(tokenizer_dir)
    return modules.Transformer(directory, tokenizer_name_or_path=tokenizer_dir)


def step_memory_bytes(batch_size: int, chunk: int | None) -> int:
    """Arguments + outputs + temporaries of the compiled step at `batch_size` (not run)."""
    update, state, batch, mesh = jax_step(batch_size, chunk)
    with jax.set_mesh(mesh):
        analysis = update.lower(state, batch).compile().memory_analysis()
    return analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes


def run_one_step(batch_size: int, chunk: int | None) -> dict:
    """Compile and run one step in this process; its peak RSS (what `--rss` spawns)."""
    update, state, batch, mesh = jax_step(batch_size, chunk)
    with jax.set_mesh(mesh):
        _, metrics = update(state, batch)
        jax.block_until_ready(metrics)
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "loss": float(metrics["loss"])}


def peer_in_child(steps: int, retain_host_memory: bool, dtype: str) -> dict:
    """`bench_sentence_transformers` (and the attention bmm) in a fresh process, with or without
    `host_memory`'s policy."""
    env = {**os.environ, host_memory.OPT_OUT_VARIABLE: "0" if retain_host_memory else "1"}
    child = [sys.executable, __file__, "--peer_child", str(steps), "--dtype", dtype]
    output = subprocess.run(child, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def step_peak_rss_bytes(batch_size: int, chunk: int | None) -> int:
    """Peak RSS of a fresh process that runs one step at `batch_size`."""
    child = [sys.executable, __file__, "--rss_child", str(batch_size), str(chunk or 0), "--dtype", SMALL.dtype]
    output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_rss_bytes"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of the matmuls (T5Config.dtype) for both trainers")
    parser.add_argument("--skip_peer", action="store_true", help="do not train sentence-transformers")
    parser.add_argument("--skip_memory", action="store_true", help="do not compile the big-batch steps")
    parser.add_argument("--rss", action="store_true", help="also run the big-batch steps and report peak RSS")
    parser.add_argument("--rss_child", nargs=2, type=int, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    parser.add_argument("--peer_child", type=int, metavar="STEPS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global SMALL
    SMALL = dataclasses.replace(SMALL, dtype=args.dtype)
    if args.peer_child:
        seconds = bench_sentence_transformers(args.peer_child, args.dtype)
        print(json.dumps({"seconds_per_step": seconds, "attention_bmm_gflops": attention_bmm_gflops_torch()}))
        return
    if args.rss_child:
        batch_size, chunk = args.rss_child
        print(json.dumps(run_one_step(batch_size, chunk or None)))
        return

    peak = matmul_peak_gflops(args.dtype)
    jax_bmm = attention_bmm_gflops_jax()
    flops = model_flops_per_step(SMALL, BATCH)
    jax_seconds, matmul_floor = bench_jax(args.steps)
    tokens = BATCH * (QUERY_LENGTH + DOC_LENGTH)
    rows = [("gtr_jax", jax_seconds)]
    if not args.skip_peer:
        # The peer runs in its own processes, once with glibc's defaults (what its users get)
        # and once with the policy gtr-jax applies; the faster of the two is the reference.
        children = {retain: peer_in_child(args.steps, retain, args.dtype) for retain in (False, True)}
        peer = {retain: child["seconds_per_step"] for retain, child in children.items()}
        print(f"sentence-transformers s/step: {peer[False]:.2f} with glibc's malloc defaults, "
              f"{peer[True]:.2f} with freed host memory retained")
        rows.append(("sentence-transformers", min(peer.values())))
        torch_bmm = max(child["attention_bmm_gflops"] for child in children.values())
    print(f"T5.1.1-small SDE, SamToNe, batch {BATCH}, lengths {QUERY_LENGTH}/{DOC_LENGTH}, {args.dtype} matmuls; "
          f"{flops / 1e12:.3f} model TFLOP per step; jnp.dot {args.dtype} peak {peak:.1f} GFLOP/s; "
          f"gtr_jax: freed host memory {'retained' if HOST_MEMORY_RETAINED else 'returned to the OS'}")
    print(f"{'trainer':24s} {'s/step':>8s} {'examples/s':>11s} {'tokens/s':>9s} {'MFU':>6s}")
    for name, seconds in rows:
        print(f"{name:24s} {seconds:8.2f} {BATCH / seconds:11.2f} {tokens / seconds:9.0f} "
              f"{flops / seconds / (peak * 1e9):6.1%}")
    print(f"gtr_jax's matmuls alone, one after another: {matmul_floor:.2f} s of its {jax_seconds:.2f} s step "
          f"({flops / matmul_floor / 1e9:.0f} GFLOP/s; a step of only these would be MFU "
          f"{flops / matmul_floor / (peak * 1e9):.0%})")
    products, m, k, n = ATTENTION_BMM
    bmm_line = f"float32 attention batched matmul ({products} x [{m},{k}] @ [{k},{n}]), GFLOP/s: XLA {jax_bmm:.0f}"
    results = {"dtype": args.dtype, "seconds_per_step": dict(rows), "peak_gflops": peak, "model_flops": flops,
               "host_memory_retained": HOST_MEMORY_RETAINED, "matmul_floor_seconds": matmul_floor,
               "attention_bmm_gflops": {"xla": jax_bmm}}
    if len(rows) == 2:
        print(f"gtr_jax / sentence-transformers examples/s: {rows[1][1] / rows[0][1]:.2f}x")
        bmm_line += f", PyTorch {torch_bmm:.0f}"
        results["attention_bmm_gflops"]["torch"] = torch_bmm
    print(bmm_line)

    if not args.skip_memory:
        grad_cache = step_memory_bytes(4096, 32)
        plain_batch = BATCH
        while step_memory_bytes(plain_batch * 2, None) <= MEMORY_LIMIT and plain_batch < 4096:
            plain_batch *= 2
        plain = step_memory_bytes(plain_batch, None)
        print("step memory (XLA compiled: arguments + outputs + temporaries)")
        print(f"  GradCache, batch 4096, chunk 32: {grad_cache / 2**30:.2f} GiB")
        print(f"  plain, largest batch under {MEMORY_LIMIT / 2**30:.0f} GiB = {plain_batch}: {plain / 2**30:.2f} GiB")
        results.update(grad_cache_4096_bytes=grad_cache, plain_batch=plain_batch, plain_bytes=plain)
        if args.rss:
            plain_rss, grad_cache_rss = step_peak_rss_bytes(plain_batch, None), step_peak_rss_bytes(4096, 32)
            print("peak RSS of a process running one step")
            print(f"  GradCache, batch 4096, chunk 32: {grad_cache_rss / 2**30:.2f} GiB")
            print(f"  plain, batch {plain_batch}: {plain_rss / 2**30:.2f} GiB")
            results.update(grad_cache_4096_rss_bytes=grad_cache_rss, plain_rss_bytes=plain_rss)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
