"""`gtr-jax encode`: embed a JSONL or TSV file of texts with one tower, as a float32 .npy."""

import os

from gtr_jax.errors import UserError


def add_parser(commands):
    """Register `gtr-jax encode` on the CLI's subparsers."""
    enc = commands.add_parser("encode", help="embed a JSONL or TSV file of texts with one tower")
    enc.add_argument("--model_dir", required=True)
    enc.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    enc.add_argument("--tower", choices=("query", "doc"), required=True)
    enc.add_argument("--input", required=True, help='JSONL with "text" (and "_id", "title") or TSV id<TAB>text')
    enc.add_argument("--output", required=True, help="a .npy file, rows in input order")
    enc.add_argument("--vocab", help="SentencePiece model (default: MODEL_DIR/spiece.model)")
    enc.add_argument("--max_length", type=int, help="tokens per text, EOS included (default: the model's)")
    enc.add_argument("--batch_size", type=int, default=64)
    enc.add_argument("--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(run=run)


def run(args):
    """Embed a JSONL/TSV file of texts with one tower; write float32 [n, embed_dim] .npy."""
    import numpy as np

    from gtr_jax.eval import encoding
    from gtr_jax.data import text_files

    if not args.output.endswith(".npy"):
        raise UserError(f"{args.output}: the output must be a .npy file")
    _, texts = text_files.read_texts(args.input)
    encoder = encoding.load_text_encoder(args.model_dir, args.step, args.vocab)
    max_length = args.max_length or encoder.model_config.max_length(args.tower)
    embeddings = encoder.embed(texts, args.tower, max_length, args.batch_size, progress=not args.quiet)
    directory = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: output directory does not exist")
    partial = args.output + ".partial.npy"
    np.save(partial, embeddings)
    os.replace(partial, args.output)
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} {args.tower} embeddings to {args.output}")
