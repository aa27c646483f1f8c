"""`gtr-jax analyze`: the SamToNe paper's §4 embedding diagnostics of one or two checkpoints, as PNGs."""

import os

from gtr_jax.cli import gin_flags, startup


def add_parser(commands):
    """Register `gtr-jax analyze` on the CLI's subparsers."""
    parser = commands.add_parser("analyze", help="embedding diagnostics (paper §4) of one or two checkpoints as PNGs")
    parser.add_argument("--model_dir", action="append", required=True, help="model directory; twice to compare")
    parser.add_argument("--label", action="append", help="name of each model in the panels (default: folder name)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    parser.add_argument("--task", required=True, help="evaluation task, e.g. demo_test, beir_scifact, msmarco_dev")
    parser.add_argument("--output", required=True, help="directory for the PNGs and report.md")
    parser.add_argument("--max_queries", type=int, default=1000, help="random queries to use (all if 0)")
    parser.add_argument("--tsne_points", type=int, default=300, help="queries (and as many passages) in the t-SNE map")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=64)
    gin_flags.add_gin_arguments(parser, file_help="gin files setting data directories", required=False,
                                example="--gin_file=data.gin --gin.BEIR_DIR=/data/beir")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args):
    """Diagnostics of one or two checkpoints; gin flags, if any, set data directories."""
    startup.register_tasks()
    from gtr_jax.eval import analysis

    if args.gin_file or args.gin_bindings:
        gin_flags.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    labels = args.label or [os.path.basename(os.path.normpath(d)) for d in args.model_dir]
    paths = analysis.analyze(args.model_dir, labels, args.task, args.output, step=args.step,
                             max_queries=args.max_queries, tsne_points=args.tsne_points, seed=args.seed,
                             batch_size=args.batch_size, progress=not args.quiet)
    print(f"wrote {', '.join(os.path.basename(p) for p in paths.values())} to {os.path.abspath(args.output)}")
