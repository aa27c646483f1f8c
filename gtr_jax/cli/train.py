"""`gtr-jax train`: train or resume the gin-configured run, t5x-style."""

from gtr_jax.cli import gin_flags, startup


def add_parser(commands):
    """Register `gtr-jax train` on the CLI's subparsers."""
    tr = commands.add_parser("train", help="train or resume a gin-configured run (t5x-style flags)")
    gin_flags.add_gin_arguments(tr, file_help="gin file; repeatable", required=True,
                                example="--gin.MODEL_DIR=/tmp/run --gin.TRAIN_STEPS=100")
    startup.add_distributed_arguments(tr)
    tr.set_defaults(run=run)


def run(args):
    """Train (or resume) the gin-configured run."""
    startup.initialize_distributed(args)
    # Before gin parses data.gin, whose `import tasks` would load TensorFlow with its start-up logs.
    startup.register_tasks()
    from gtr_jax.train import trainer

    gin_flags.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    gin_flags.run_configured(trainer.train)
