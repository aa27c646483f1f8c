"""`gtr-jax compile`: compile a run's train or encode step for a Cloud TPU slice on this host, and report its plan."""

import json
import os

from gtr_jax.cli import gin_flags, startup


def add_parser(commands):
    """Register `gtr-jax compile` on the CLI's subparsers."""
    co = commands.add_parser("compile", help="compile a run's train or encode step for a TPU slice, without a TPU; "
                                             "report per-device memory, FLOPs and a roofline step time")
    gin_flags.add_gin_arguments(co, file_help="gin file of the run; repeatable", required=True,
                                example="--gin.BATCH_SIZE=2048 --gin.make_mesh.mesh_shape='(-1,1)'")
    co.add_argument("--topology", required=True,
                    help="Cloud TPU accelerator type, e.g. v4-128, v5litepod-256, v5p-64 or v6e-16")
    co.add_argument("--num_slices", type=int, default=1, help="number of such slices (multi-slice)")
    co.add_argument("--step", choices=("train", "encode"), default="train",
                    help="the train step `train` runs, or the encode step `encode`/`evaluate` run")
    co.add_argument("--num_negatives", type=int, default=0, help="train: hard negatives per example in the batch")
    co.add_argument("--encode_batch_size", type=int, default=64, help="encode: texts per batch (encode's --batch_size)")
    co.add_argument("--tower", choices=("query", "doc"), default="doc", help="encode: the tower")
    co.add_argument("--max_length", type=int, help="encode: tokens per text (default: the model's for the tower)")
    co.add_argument("--mfu", type=float, default=0.5,
                    help="assumed model FLOPs utilization for the second roofline estimate (default 0.5)")
    co.add_argument("--json", help="also write the report as JSON to this path (also when it does not fit)")
    co.set_defaults(run=run)


def run(args):
    """Compile the gin-configured step for the topology; print the report (exit 1 if it does not fit)."""
    import jax

    # The host's JAX computes nothing here; without this it would try to open a TPU through libtpu.
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    # Before gin parses data.gin, whose `import tasks` would load TensorFlow with its start-up logs.
    startup.register_tasks()
    from gtr_jax.train import aot

    # Nothing is read or written: a run file's required MODEL_DIR and INIT_CHECKPOINT need not be
    # given (a later binding still wins).
    gin_flags.parse_gin(args.gin_file, ["MODEL_DIR = None", "INIT_CHECKPOINT = None", *args.gin_bindings],
                        args.gin_search_paths)
    try:
        if args.step == "train":
            report = gin_flags.run_configured(aot.compile_train_step, args.topology, args.num_slices,
                                              args.num_negatives, args.mfu)
        else:
            report = gin_flags.run_configured(aot.compile_encode_step, args.topology, args.num_slices,
                                              args.encode_batch_size, args.tower, args.max_length, args.mfu)
    except aot.DoesNotFit as error:
        _write_json(args.json, error.report)
        raise
    print(report.text())
    _write_json(args.json, report)


def _write_json(path, report):
    if path:
        with open(path + ".partial", "w") as f:
            json.dump(report.as_dict(), f, indent=2)
        os.replace(path + ".partial", path)
