"""`gtr-jax import`: a model directory from HF T5 or sentence-transformers GTR weights."""

import os


def add_parser(commands):
    """Register `gtr-jax import` on the CLI's subparsers."""
    imp = commands.add_parser("import", help="a model directory from HF T5 or sentence-transformers GTR weights")
    imp.add_argument("--from", dest="source_format", choices=("hf", "sentence-transformers"), required=True)
    imp.add_argument("source", metavar="SRC", help="the HF or sentence-transformers model directory")
    imp.add_argument("--output", required=True, help="model directory to create")
    imp.add_argument("--tower", choices=("sde", "ade", "ade_spl"), default="sde",
                     help="tower layout (a sentence-transformers Router model brings its own)")
    imp.add_argument("--embed_dim", type=int, default=768, help="projection size (hf only; ST takes its Dense)")
    imp.add_argument("--seed", type=int, default=0, help="seed of the projection's init (hf only)")
    imp.add_argument("--vocab", help="SentencePiece model to use instead of SRC/spiece.model")
    imp.add_argument("--scan_layers", action="store_true", help="store layers stacked, for T5Config.scan_layers")
    imp.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    imp.set_defaults(run=run)


def run(args):
    """Convert HF / sentence-transformers weights into a model directory to start training from."""
    from gtr_jax.interop import hf_weights  # imports JAX and flax: not for `gtr-jax --help`

    config = hf_weights.import_model_dir(args.source, args.output, source_format=args.source_format, tower=args.tower,
                                         embed_dim=args.embed_dim, seed=args.seed, vocab=args.vocab,
                                         scan_layers=args.scan_layers, overwrite=args.overwrite)
    lengths = {"query": config.query_max_length, "doc": config.doc_max_length}
    print(f"wrote {config.tower} model ({config.encoder.num_layers} layers, d_model {config.encoder.d_model}, "
          f"embed_dim {config.embed_dim}, max lengths {lengths}) to {os.path.abspath(args.output)}")
