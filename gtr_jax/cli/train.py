"""`gtr-jax train`: train or resume the gin-configured run, t5x-style."""

from gtr_jax.cli import gin_flags, startup


def add_parser(commands):
    """Register `gtr-jax train` on the CLI's subparsers."""
    tr = commands.add_parser("train", help="train or resume a gin-configured run (t5x-style flags)")
    gin_flags.add_gin_arguments(tr, file_help="gin file; repeatable", required=True,
                                example="--gin.MODEL_DIR=/tmp/run --gin.TRAIN_STEPS=100")
    tr.add_argument("--coordinator_address", help="host:port of process 0, for multi-process runs off Cloud TPU")
    tr.add_argument("--num_processes", type=int, help="number of processes (with --coordinator_address)")
    tr.add_argument("--process_id", type=int, help="this process's index (with --coordinator_address)")
    tr.add_argument("--multihost_tpu", action="store_true", help="initialize jax.distributed from the TPU environment")
    tr.set_defaults(run=run)


def _initialize_distributed(args):
    """jax.distributed for multi-process runs: explicit flags, or auto-detected on Cloud TPU."""
    import jax

    if args.coordinator_address:
        jax.distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                                   process_id=args.process_id)
    elif args.multihost_tpu:
        jax.distributed.initialize()


def run(args):
    """Train (or resume) the gin-configured run."""
    _initialize_distributed(args)
    # Before gin parses data.gin, whose `import tasks` would load TensorFlow with its start-up logs.
    startup.register_tasks()
    from gtr_jax.train import trainer

    gin_flags.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    gin_flags.run_configured(trainer.train)
