"""The scale plan: the real train step compiled for Cloud TPU slices on this CPU host, for every model size.

For T5.1.1 base / large / xl / xxl and GTR's T5 v1.0 xxl (gin/models/), SDE and ADE-SPL
(gin/architectures/), global batch 512 and 2048 (plain step) and 8192 (GradCache), on
v4-32, v5litepod-64, v4-128 and v5litepod-256, each cell runs `gtr-jax compile` in a
subprocess with the run files a user would use on TPU:

  --gin_file=runs/msmarco.gin --gin_file=runs/tpu.gin --gin_file=models/M.gin
  --gin_file=architectures/A.gin --gin.BATCH_SIZE=B --num_negatives=1

(MS MARCO fine-tuning as the SamToNe paper does it: lengths 64/256 from runs/finetune.gin,
one mined hard negative per query from msmarco_train_qidpidtriples, SamToNe on the query
side; runs/tpu.gin: bfloat16 matmuls, remat, scanned layers, the batch over every chip).

Sharding, as a user would pick it: the fsdp rule (`standard_logical_axis_rules.fsdp`) is on
when the parameters and optimizer state, replicated, would take more than half of a chip's
HBM (computed from the abstract train state, no compile); otherwise the replicated step is
compiled first, and when it does not fit, the fsdp step too (fsdp frees XLA's temporaries
as well as parameters and their gradients, so no estimate decides it). Batch 8192 uses
GradCache with chunks of GRAD_CACHE_CHUNK examples per device. Every attempt is recorded.

Results go to bench/results/scale_tpu.json after every compile; a rerun skips the attempts
already there (resumable; kill it any time). Cells run in priority order: first those that
decide the smallest slice of each row (the smaller slice of each chip kind, then the bigger
one only where the smaller does not fit, the papers' setups first), then the rest. After
every compile the table in docs/scaling.md (between its BEGIN/END markers) is rewritten
from the JSON; `--doc_only` only rewrites it. An xxl compile takes many minutes and
several GiB of memory on a small host (docs/scaling.md): run it niced, in the background.

Run: nice -n 5 .venv/bin/python bench/bench_scale.py [--doc_only] [--max_compiles N]
"""

import argparse
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

# This process computes abstract shapes only; its children compile for TPU on the CPU too.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "scale_tpu.json"
DOC = ROOT / "docs" / "scaling.md"
BEGIN, END = "<!-- BEGIN bench_scale.py -->", "<!-- END bench_scale.py -->"

MODELS = {"t5_1_1_base": "T5.1.1 base", "t5_1_1_large": "T5.1.1 large", "t5_1_1_xl": "T5.1.1 xl",
          "t5_1_1_xxl": "T5.1.1 xxl", "gtr_t5_xxl": "GTR T5 v1.0 xxl"}
ARCHITECTURES = {"sde": "SDE", "ade_spl": "ADE-SPL"}
BATCHES = (512, 2048, 8192)
GRAD_CACHE_BATCH, GRAD_CACHE_CHUNK = 8192, 16
# Per chip kind, smaller slice first.
SLICES = {"v4": ("v4-32", "v4-128"), "v5e": ("v5litepod-64", "v5litepod-256")}
RUN_FILES = ("runs/msmarco.gin", "runs/tpu.gin")
NUM_NEGATIVES = 1
COMPILE_TIMEOUT_S = 3 * 3600
MAX_KILLED, RETRY_WAIT_S = 5, 600  # compiles killed by a signal in one run are retried this often, after a wait
GIB = 2**30
# The papers' setups, whose smallest slices the doc names: SamToNe's (Moiseev et al. 2023) as
# runs/finetune.gin and runs/msmarco.gin state it, and GTR's (Ni et al. 2021).
PAPER_SETUPS = (("SamToNe (ADE-SPL, batch 512)", "ade_spl", 512, ("t5_1_1_base", "t5_1_1_large", "t5_1_1_xxl")),
                ("GTR-style (SDE, batch 2048)", "sde", 2048, tuple(MODELS)))
# Besides the papers' setups, the doc names the smallest slices of the GTR-style batch grown
# fourfold with GradCache, the way to a big batch on a small slice.
SUMMARY_SETUPS = (*PAPER_SETUPS, ("GTR-style with GradCache (SDE, batch 8192)", "sde", GRAD_CACHE_BATCH, tuple(MODELS)))
ROOFLINE_MFU = 0.5  # the examples/s in the table: model FLOPs at this fraction of the slice's bf16 peak


def cell_key(model, architecture, batch, accelerator, fsdp) -> str:
    """The JSON key of one compile."""
    return f"{model}|{architecture}|{batch}|{accelerator}|{'fsdp' if fsdp else 'replicated'}"


def load(path: pathlib.Path) -> dict:
    """The results so far (an empty set of attempts at first)."""
    return json.loads(path.read_text()) if path.exists() else {"attempts": {}, "models": {}}


def save(path: pathlib.Path, results: dict):
    """Write the results atomically."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(partial, path)


def model_facts(model: str, architecture: str) -> dict:
    """From abstract shapes, no compile: the train state's bytes unsharded (parameters, optimizer
    state, ...) and the model FLOPs of a step at each global batch (`gtr_jax.train.flops`)."""
    import gin
    import jax

    from gtr_jax.cli import gin_flags, startup
    from gtr_jax.train import aot, flops, partitioning, trainer

    startup.register_tasks()
    gin.clear_config()
    gin_flags.parse_gin([*RUN_FILES, f"models/{model}.gin", f"architectures/{architecture}.gin"],
                        ["MODEL_DIR = None", "INIT_CHECKPOINT = None", "BATCH_SIZE = 1"], [])
    try:
        arguments = aot.configured_train_arguments()
        mesh = partitioning.make_mesh((1, 1), devices=jax.devices("cpu")[:1])
        state = trainer.build_step(mesh=mesh, **arguments).abstract_state
        lengths = aot.feature_lengths()
        step_flops = {str(batch): flops.train_step_flops(arguments["model_config"], batch, lengths, NUM_NEGATIVES,
                                                         arguments["loss"]) for batch in BATCHES}
    finally:
        gin.clear_config()
    return {"state_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)), "model_flops": step_flops}


def compile_cell(model, architecture, batch, accelerator, fsdp) -> dict:
    """Run `gtr-jax compile` for one cell in a subprocess; its outcome and report."""
    with tempfile.TemporaryDirectory() as directory:
        report_path = os.path.join(directory, "report.json")
        command = [sys.executable, "-m", "gtr_jax", "compile", f"--topology={accelerator}",
                   *[f"--gin_file={f}"
                     for f in (*RUN_FILES, f"models/{model}.gin", f"architectures/{architecture}.gin")],
                   f"--gin.BATCH_SIZE={batch}", f"--num_negatives={NUM_NEGATIVES}",
                   f"--gin.standard_logical_axis_rules.fsdp={fsdp}", f"--mfu={ROOFLINE_MFU}", f"--json={report_path}"]
        if batch == GRAD_CACHE_BATCH:
            command.append(f"--gin.train.grad_cache_chunk_size={GRAD_CACHE_CHUNK}")
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"}, preexec_fn=_first_to_go)
        except subprocess.TimeoutExpired:
            done = subprocess.CompletedProcess(command, 124, "", f"timed out after {COMPILE_TIMEOUT_S} s")
        outcome = {"command": " ".join(command[2:-1]), "returncode": done.returncode,
                   "wall_seconds": round(time.perf_counter() - start, 1)}
        if os.path.exists(report_path):
            outcome["report"] = json.loads(pathlib.Path(report_path).read_text())
        lines = (done.stderr or "").strip().splitlines()
        if done.returncode and lines:
            outcome["message"] = lines[-1]
    return outcome


def _first_to_go():
    """On a shared host short of memory, the kernel ends this compile before anyone else's work."""
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")


def row_plan(results, model, architecture, batch, accelerator):
    """The next fsdp setting to compile for a cell (see the module docstring), or None when the cell is decided."""
    from gtr_jax.train import tpu_chips

    tpu = tpu_chips.parse_accelerator(accelerator)
    attempts = results["attempts"]
    fsdp_tried = cell_key(model, architecture, batch, accelerator, True) in attempts
    if results["models"][f"{model}|{architecture}"]["state_bytes"] > tpu.chip.hbm_bytes / 2:
        return None if fsdp_tried else True
    replicated = attempts.get(cell_key(model, architecture, batch, accelerator, False))
    if replicated is None:
        return False
    report = replicated.get("report")
    return None if report is None or report["fits"] or fsdp_tried else True


def cell_outcome(results, model, architecture, batch, accelerator):
    """The attempt that decides a cell (fitting one first, else the last tried), or None if none ran."""
    tried = [results["attempts"].get(cell_key(model, architecture, batch, accelerator, fsdp)) for fsdp in (False, True)]
    tried = [t for t in tried if t is not None]
    fitting = [t for t in tried if _fits(t)]
    return (fitting or tried[-1:] or [None])[0]


def _fits(outcome) -> bool:
    return "report" in outcome and outcome["report"]["fits"]


def queue(results):
    """Cells in priority order (module docstring); batch 512 and 2048 before the GradCache batch."""
    tiers = {}
    for batch in BATCHES:
        plain = batch != GRAD_CACHE_BATCH
        for architecture in ("ade_spl", "sde"):
            for model in MODELS:
                paper = any((architecture, batch) == (a, b) and model in models for _, a, b, models in PAPER_SETUPS)
                for small, big in SLICES.values():
                    tiers.setdefault((not plain, 0, False), []).append((model, architecture, batch, small))
                    outcome = cell_outcome(results, model, architecture, batch, small)
                    needed = outcome is not None and not _fits(outcome)
                    tiers.setdefault((not plain, 1, not paper) if needed else (True, 2, False), []).append(
                        (model, architecture, batch, big))
    return [cell for tier in sorted(tiers) for cell in tiers[tier]]


def run(args):
    """Compile cells until all are decided or --max_compiles; rewrite the doc after each."""
    results = load(args.results)
    results["versions"] = {"jax": importlib.metadata.version("jax"), "libtpu": importlib.metadata.version("libtpu")}
    for model in MODELS:
        for architecture in ARCHITECTURES:
            key = f"{model}|{architecture}"
            if key not in results["models"]:
                results["models"][key] = model_facts(model, architecture)
    save(args.results, results)
    compiles = killed = 0
    while compiles < args.max_compiles:
        pending = [(cell, fsdp) for cell in queue(results)
                   if (fsdp := row_plan(results, *cell)) is not None]
        if not pending:
            break
        (model, architecture, batch, accelerator), fsdp = pending[0]
        print(f"compiling {model} {architecture} batch {batch} on {accelerator} "
              f"({'fsdp' if fsdp else 'replicated'}); {len(pending)} cells pending", flush=True)
        outcome = compile_cell(model, architecture, batch, accelerator, fsdp)
        compiles += 1
        if outcome["returncode"] < 0 and killed < MAX_KILLED:
            # Killed (e.g. by the kernel for memory): not the program's fault; try again later.
            killed += 1
            print(f"  killed by signal {-outcome['returncode']}; retrying in {RETRY_WAIT_S} s", flush=True)
            time.sleep(RETRY_WAIT_S)
            continue
        results["attempts"][cell_key(model, architecture, batch, accelerator, fsdp)] = outcome
        save(args.results, results)
        write_doc(results, args.doc)
        report = outcome.get("report")
        state = "error: " + outcome.get("message", "") if report is None else (
            "fits" if report["fits"] else "does not fit")
        print(f"  {state} ({outcome['wall_seconds']:.0f} s)", flush=True)
    write_doc(results, args.doc)


# ---------------------------------------------------------------- the table


def _cell_text(outcome) -> str:
    if outcome is None:
        return "not compiled yet"
    if "report" not in outcome:
        return f"compile failed ({outcome.get('message', 'exit ' + str(outcome['returncode']))[:60]})"
    report = outcome["report"]
    total = "?" if report["total_bytes"] is None else f"{report['total_bytes'] / GIB:.1f}"
    plan = "fsdp" if report["settings"]["fsdp"] else "repl."
    if not report["fits"]:
        return f"✗ {total} GiB ({plan})"
    return f"✓ {total} GiB ({plan}), {report['examples_per_second_at_mfu']:,.0f}/s"


def smallest_slices(results, model, architecture, batch) -> str:
    """Per chip kind, the smaller of its two slices the step fits on, as far as compiled."""
    found = []
    for kind, (small, big) in SLICES.items():
        first, second = (cell_outcome(results, model, architecture, batch, s) for s in (small, big))
        if first is None:
            found.append(f"{kind}: not compiled yet")
        elif _fits(first):
            found.append(small)
        elif second is None:
            found.append(f"{kind}: not {small}, {big} not compiled yet")
        else:
            found.append(big if _fits(second) else f"{kind}: neither {small} nor {big}")
    return "; ".join(found)


def table(results) -> str:
    """The markdown table and the smallest slice of each paper setup."""
    header = ["model", "towers", "global batch", "model TFLOP / step", *[s for pair in SLICES.values() for s in pair]]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for batch in BATCHES:
        for model, name in MODELS.items():
            for architecture, towers in ARCHITECTURES.items():
                step_flops = results["models"][f"{model}|{architecture}"]["model_flops"][str(batch)]
                cells = [_cell_text(cell_outcome(results, model, architecture, batch, s))
                         for pair in SLICES.values() for s in pair]
                label = f"{batch:,}" + (f" (GradCache {GRAD_CACHE_CHUNK})" if batch == GRAD_CACHE_BATCH else "")
                lines.append("| " + " | ".join([name, towers, label, f"{step_flops / 1e12:,.0f}", *cells]) + " |")
    lines += ["", "Smallest slice of each chip kind each setup fits on, as compiled:", ""]
    for title, architecture, batch, models in SUMMARY_SETUPS:
        for model in models:
            lines.append(f"* {title}, {MODELS[model]}: {smallest_slices(results, model, architecture, batch)}")
    versions = results.get("versions", {})
    done = sum(1 for a in results["attempts"].values() if "report" in a)
    lines += ["", f"{done} compiles by XLA's TPU compiler from libtpu {versions.get('libtpu', '?')} "
                  f"(jax {versions.get('jax', '?')}), regenerated by `bench/bench_scale.py` from "
                  f"`bench/results/scale_tpu.json`."]
    return "\n".join(lines)


def write_doc(results, doc: pathlib.Path):
    """Replace the generated part of the doc (between the markers) with the current table."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc}: no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    partial = doc.with_suffix(".partial")
    partial.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{rest.split(END, 1)[1]}")
    os.replace(partial, doc)


def main():
    """Parse flags; compile what is pending, or only rewrite the doc."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--doc", type=pathlib.Path, default=DOC)
    parser.add_argument("--doc_only", action="store_true", help="only rewrite the doc's table from the JSON")
    parser.add_argument("--max_compiles", type=int, default=10**6, help="stop after this many compiles")
    args = parser.parse_args()
    if args.doc_only:
        write_doc(load(args.results), args.doc)
    else:
        run(args)


if __name__ == "__main__":
    main()
