"""`gtr-jax export`: a trained model as a sentence-transformers directory or a jax.export artifact."""

import os

from gtr_jax.errors import UserError
from gtr_jax.interop.export import FORMATS, PLATFORMS, export_model


def add_parser(commands):
    """Register `gtr-jax export` on the CLI's subparsers."""
    exp = commands.add_parser("export", help="a sentence-transformers directory or a jax.export artifact for serving")
    exp.add_argument("--model_dir", required=True)
    exp.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    exp.add_argument("--format", choices=FORMATS, required=True)
    exp.add_argument("--output", required=True, help="directory to create")
    exp.add_argument("--vocab", help="SentencePiece model (default: MODEL_DIR/spiece.model)")
    exp.add_argument("--platforms", default=",".join(PLATFORMS), help="jax only: platforms to lower for, comma-separated")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    exp.set_defaults(run=run)


def run(args):
    """Restore a checkpoint and write it in the requested serving format."""
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    if set(platforms) - set(PLATFORMS) or not platforms:
        raise UserError(f"--platforms: {args.platforms!r}; choose from {', '.join(PLATFORMS)}")
    model_config, step = export_model(args.model_dir, args.output, export_format=args.format, step=args.step,
                                      vocab=args.vocab, platforms=platforms, overwrite=args.overwrite)
    print(f"wrote {model_config.tower} model, step {step}, as {args.format} to {os.path.abspath(args.output)}")
