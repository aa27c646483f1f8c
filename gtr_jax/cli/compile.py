"""`gtr-jax compile`: compile a run's train step for a Cloud TPU slice on this host, and report its memory."""

import json
import os

from gtr_jax.cli import gin_flags, startup


def add_parser(commands):
    """Register `gtr-jax compile` on the CLI's subparsers."""
    co = commands.add_parser("compile", help="compile a run's train step for a TPU slice, without a TPU; "
                                             "report per-device memory")
    gin_flags.add_gin_arguments(co, file_help="gin file of the run; repeatable", required=True,
                                example="--gin.BATCH_SIZE=2048 --gin.make_mesh.mesh_shape='(-1,1)'")
    co.add_argument("--topology", required=True, help="Cloud TPU accelerator type, e.g. v4-128 or v5litepod-256")
    co.add_argument("--num_slices", type=int, default=1, help="number of such slices (multi-slice)")
    co.add_argument("--num_negatives", type=int, default=0, help="hard negatives per example in the batch")
    co.add_argument("--json", help="also write the report as JSON to this path")
    co.set_defaults(run=run)


def run(args):
    """Compile the gin-configured train step for the topology; print the report."""
    import jax

    # The host's JAX computes nothing here; without this it would try to open a TPU through libtpu.
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    # Before gin parses data.gin, whose `import tasks` would load TensorFlow with its start-up logs.
    startup.register_tasks()
    from gtr_jax.train import aot

    # Nothing is written: a run file's required MODEL_DIR need not be given (a later binding still wins).
    gin_flags.parse_gin(args.gin_file, ["MODEL_DIR = None", *args.gin_bindings], args.gin_search_paths)
    report = gin_flags.run_configured(aot.compile_train_step, args.topology, args.num_slices, args.num_negatives)
    print(report.text())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.as_dict(), f, indent=2)
