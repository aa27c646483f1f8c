"""Benchmark (not a test): the contrastive loss's forward+backward against global batch size.

Two ways to get global negatives on 8 virtual CPU devices, batch sharded over mesh axis 'data':
  sharded-rows     `sharded_contrastive_loss`: shard_map + all_gather, each device computes its own
                   b_local × B rows of logits.
  replicated-logits `jax.jit` of the single-device `contrastive_loss` on the same batch-sharded
                   global arrays, leaving the partitioning (and any B × B logits) to XLA.

Each (batch size, mode) runs in a fresh subprocess so that memory figures do not mix. Reported:
  time      median wall time of one jitted value_and_grad step (w.r.t. both embedding sets),
            after a first untimed run; for B >= 8192 (a minute a step here) the first run itself,
            marked '*', so the default run stays at a few minutes.
  cpu       median CPU time of the process over the same steps: less sensitive than wall time
            to other work on a shared machine.
  temp/dev  XLA's compiled memory_analysis(): temporary buffers of the per-device program.
  RSS step  host peak RSS during the first step above the RSS just before it (the peak is reset
            through /proc/self/clear_refs), i.e. what all 8 virtual devices of this one process
            allocated together while running the step.

    python bench/bench_loss.py [--sizes 512,1024,...] [--same_tower query] [--bidirectional]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

MODES = ("sharded-rows", "replicated-logits")


def _rss_kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def run_one(batch, mode, embed, repeats, loss_kwargs):
    """Measures one configuration in this process; returns a dict for the table."""
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from gtr_jax import losses

    mesh = jax.make_mesh((8, 1), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rng = np.random.default_rng(0)
    q, d = (rng.normal(size=(batch, embed)).astype(np.float32) for _ in range(2))
    q, d = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, d))
    shard = NamedSharding(mesh, P("data"))
    q, d = jax.device_put(q, shard), jax.device_put(d, shard)

    if mode == "sharded-rows":
        def loss(q, d):
            return losses.sharded_contrastive_loss(mesh, q, d, temperature=0.01, **loss_kwargs)
    else:
        def loss(q, d):
            return losses.contrastive_loss(q, d, temperature=0.01, **loss_kwargs)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    compiled = step.lower(q, d).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes

    # The first run's peak: later runs reuse memory the allocator kept, which RSS cannot see.
    rss_before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS

    def timed():
        start, cpu_start = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(q, d))
        return time.perf_counter() - start, time.process_time() - cpu_start

    first = timed()
    rss_step = _rss_kib("VmHWM") - rss_before
    runs = [timed() for _ in range(repeats)] or [first]
    times, cpu_times = zip(*runs)
    return {
        "batch": batch,
        "mode": mode,
        "time_s": statistics.median(times),
        "cpu_s": statistics.median(cpu_times),
        "first_run_timed": not repeats,
        "temp_mib_per_device": temp / 2**20,
        "rss_step_mib": rss_step / 1024,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--embed", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=-1,
                        help="timed steps after the first; default 3 below B=8192, else 0 (time the first)")
    parser.add_argument("--same_tower", default="query", choices=["none", "query", "doc", "both"])
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("BATCH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    loss_kwargs = {
        "same_tower": None if args.same_tower == "none" else args.same_tower,
        "bidirectional": args.bidirectional,
    }

    if args.one:
        batch, mode = int(args.one[0]), args.one[1]
        repeats = args.repeats if args.repeats >= 0 else (3 if batch < 8192 else 0)
        print(json.dumps(run_one(batch, mode, args.embed, repeats, loss_kwargs)))
        return

    print(f"contrastive loss fwd+bwd, embed {args.embed}, 8 virtual CPU devices, mesh (data=8, model=1), "
          f"same_tower={loss_kwargs['same_tower']}, bidirectional={args.bidirectional}, float32")
    header = f"{'B':>6} {'mode':<18} {'time s':>8} {'cpu s':>8} {'temp MiB/dev':>13} {'RSS step MiB':>13}"
    print(header)
    print("-" * len(header))
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(here) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for batch in (int(s) for s in args.sizes.split(",")):
        for mode in MODES:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", str(batch), mode,
                   "--embed", str(args.embed), "--repeats", str(args.repeats),
                   "--same_tower", args.same_tower] + (["--bidirectional"] if args.bidirectional else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                print(f"{batch:>6} {mode:<18} failed: {reason[:80]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mark = "*" if r["first_run_timed"] else " "
            print(f"{batch:>6} {mode:<18} {r['time_s']:>8.3f}{mark}{r['cpu_s']:>8.3f} "
                  f"{r['temp_mib_per_device']:>13.1f} {r['rss_step_mib']:>13.1f}", flush=True)
    print("time s, cpu s: wall and process CPU time of one step; '*': the first run (no repeats).")
    print("temp MiB/dev: XLA compiled memory_analysis() temporaries of the per-device program.")
    print("RSS step MiB: host peak RSS during the first step above the RSS before it, all 8 devices.")


if __name__ == "__main__":
    main()
