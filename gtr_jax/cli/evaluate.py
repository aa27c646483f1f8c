"""`gtr-jax evaluate`: corpus-level retrieval metrics of a checkpoint, or of BM25, on gin-configured tasks."""

from gtr_jax.cli import gin_flags, startup


def add_parser(commands):
    """Register `gtr-jax evaluate` on the CLI's subparsers."""
    parser = commands.add_parser("evaluate", help="corpus-level retrieval metrics of a checkpoint (gin-configured)")
    gin_flags.add_gin_arguments(
        parser, file_help="gin file, e.g. gin/eval/retrieval.gin; repeatable", required=True,
        example="--gin.MODEL_DIR=/tmp/run --gin.MIXTURE_OR_TASK_NAME=beir_scifact --gin.EVAL_OUTPUT_DIR=/tmp/eval")
    parser.add_argument("--ranker", choices=("model", "bm25"), default="model",
                        help="rank with the checkpoint of MODEL_DIR, or with BM25 (bm25s; no MODEL_DIR)")
    parser.set_defaults(run=run)


def run(args):
    """Evaluate the gin-configured checkpoint (or BM25) on the gin-configured tasks."""
    startup.register_tasks()  # before gin parses data.gin, whose `import tasks` would load TensorFlow loudly
    from gtr_jax.eval import evaluation

    bindings, evaluate = args.gin_bindings, evaluation.evaluate
    if args.ranker == "bm25":
        # BM25 reads no checkpoint, but gin requires the gin files' MODEL_DIR to be set; a user's binding still wins.
        bindings, evaluate = ["MODEL_DIR = None", *bindings], evaluation.evaluate_bm25
    gin_flags.parse_gin(args.gin_file, bindings, args.gin_search_paths)
    gin_flags.run_configured(evaluate)
