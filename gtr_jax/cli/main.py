"""The `gtr-jax` command line (also `python -m gtr_jax`).

Every subcommand reports a user's mistake (a missing file, a malformed line, a wrong
flag) as one line on stderr and exits non-zero, without a traceback.
"""

import argparse
import logging
import os
import sys

# TensorFlow (pulled in by seqio and clu) logs GPU probing at start-up; CPU-only users
# do not need it, and anyone who does can set the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from gtr_jax.train import host_memory  # imports no JAX

# Before anything imports JAX: XLA's CPU runtime would otherwise fault its step buffers
# back in from the kernel on every step (see host_memory).
host_memory.retain_freed_memory_if_jax_runs_on_cpu()

from gtr_jax.errors import UserError
from gtr_jax.eval.analysis import add_analyze_parser
from gtr_jax.eval.evaluation import add_evaluate_parser
from gtr_jax.interop.export import add_export_parser
from gtr_jax.eval.metrics import add_metrics_parser


def _import_command(args):
    """Convert HF / sentence-transformers weights into a model directory to start training from."""
    import numpy as np

    from gtr_jax.train import checkpoints
    from gtr_jax.model import dual_encoder, t5
    from gtr_jax.interop import hf_weights

    source = os.path.abspath(args.source)
    if not os.path.isdir(source):
        raise UserError(f"{source}: no such directory")
    if args.source_format == "hf":
        encoder_config = hf_weights.t5_config_from_hf(os.path.join(source, "config.json"))
        encoder = hf_weights.encoder_params_from_hf(source, encoder_config)
        # An HF T5 has no projection: start it from a seeded random init, as GTR does.
        rng = np.random.default_rng(args.seed)
        projection = rng.normal(0, encoder_config.d_model**-0.5, (encoder_config.d_model, args.embed_dim)).astype(np.float32)
        # T5 was pre-trained on 512-token inputs.
        vocab_dir, lengths = source, {"query": 512, "doc": 512}
        params = hf_weights.model_params(encoder, projection, args.tower)
    elif hf_weights.is_router_model(source):
        # An asymmetric export (ade, ade_spl) brings its own tower layout and per-tower lengths.
        args.tower, encoder_config, params, lengths, vocab_dir = hf_weights.read_asymmetric_sentence_transformers(source)
    else:
        encoder_config, encoder, projection, max_length, vocab_dir = hf_weights.read_sentence_transformers(source)
        lengths = {"query": max_length, "doc": max_length}
        params = hf_weights.model_params(encoder, projection, args.tower)
    lengths = {tower: length or 512 for tower, length in lengths.items()}
    encoder_config = t5.T5Config(**{**encoder_config.to_dict(), "scan_layers": args.scan_layers})
    if args.scan_layers:
        params = {name: t5.stack_layers(tree, encoder_config.num_layers) if name.endswith("encoder") else tree
                  for name, tree in params.items()}
    embed_dim = next(tree["dense"]["kernel"].shape[1] for name, tree in params.items() if name.endswith("projection"))
    model_config = dual_encoder.ModelConfig(encoder_config, args.tower, embed_dim, lengths["query"], lengths["doc"])
    with checkpoints.atomic_directory(args.output, overwrite=args.overwrite) as staging:
        hf_weights.copy_vocabulary(vocab_dir, args.vocab, staging)
        checkpoints.write_model_dir(staging, model_config, params, step=0)
    print(f"wrote {args.tower} model ({encoder_config.num_layers} layers, d_model {encoder_config.d_model}, "
          f"embed_dim {model_config.embed_dim}, max lengths {lengths}) to {os.path.abspath(args.output)}")


def _encode_command(args):
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


# Macros whose values are paths or names: a bare value is taken as a string.
STRING_MACROS = ("MODEL_DIR", "INIT_CHECKPOINT", "MIXTURE_OR_TASK_NAME", "VOCABULARY")
GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "gin")


def _gin_binding(name: str, value: str) -> str:
    """A gin binding `name = value`; a bare string for path-like macros is quoted for the user."""
    if (name in STRING_MACROS or name.endswith("_DIR")) and value[:1] not in ("'", '"', "%", "@") and value != "None":
        value = repr(value)
    return f"{name} = {value}"


def parse_gin(gin_files, gin_bindings, search_paths):
    """Load gin files and `--gin.NAME=VALUE` bindings, turning gin's errors into one line."""
    import gin

    # Importing registers every configurable a gin file may name.
    from gtr_jax.model import dual_encoder, t5  # noqa: F401
    from gtr_jax import losses  # noqa: F401
    from gtr_jax.train import optim, partitioning, trainer  # noqa: F401
    from gtr_jax.data import vocab  # noqa: F401

    for path in [GIN_DIR, *search_paths]:
        gin.add_config_file_search_path(path)
    root_logger = logging.getLogger()
    level = root_logger.level
    # gin logs an error for every search path an include is not found under, even when a
    # later one has it; a file found nowhere still raises below.
    root_logger.setLevel(logging.CRITICAL)
    try:
        gin.parse_config_files_and_bindings(gin_files, gin_bindings)
    except (OSError, ValueError, SyntaxError) as error:
        raise UserError(f"gin: {str(error).strip().splitlines()[0]}") from None
    except ImportError as error:
        raise UserError(f"gin: a gin file imports a module that does not exist ({error})") from None
    finally:
        root_logger.setLevel(level)


def _split_gin_flags(argv):
    """(other args, bindings) with every `--gin.NAME=VALUE` turned into a binding."""
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            bindings.append(_gin_binding(name, value))
        else:
            rest.append(arg)
    return rest, bindings


def _initialize_distributed(args):
    """jax.distributed for multi-process runs: explicit flags, or auto-detected on Cloud TPU."""
    import jax

    if args.coordinator_address:
        jax.distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                                   process_id=args.process_id)
    elif args.multihost_tpu:
        jax.distributed.initialize()


def _train_command(args):
    """Train (or resume) the gin-configured run."""
    from gtr_jax.train import trainer

    _initialize_distributed(args)
    parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    try:
        trainer.train()
    except RuntimeError as error:
        if "Required bindings" in str(error) or "REQUIRED" in str(error):
            raise UserError(f"gin: {str(error).splitlines()[0]}") from None
        raise


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="gtr-jax", description="GTR dual encoders with the SamToNe loss, in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = commands.add_parser("train", help="train or resume a gin-configured run (t5x-style flags)")
    tr.add_argument("--gin_file", action="append", default=[], required=True, help="gin file; repeatable")
    tr.add_argument("--gin_search_paths", action="append", default=[], help="extra directories for gin includes")
    tr.add_argument("--coordinator_address", help="host:port of process 0, for multi-process runs off Cloud TPU")
    tr.add_argument("--num_processes", type=int, help="number of processes (with --coordinator_address)")
    tr.add_argument("--process_id", type=int, help="this process's index (with --coordinator_address)")
    tr.add_argument("--multihost_tpu", action="store_true", help="initialize jax.distributed from the TPU environment")
    tr.epilog = "Any --gin.NAME=VALUE adds a gin binding, e.g. --gin.MODEL_DIR=/tmp/run --gin.TRAIN_STEPS=100."
    tr.set_defaults(run=_train_command)

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
    imp.set_defaults(run=_import_command)

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
    enc.set_defaults(run=_encode_command)

    add_export_parser(commands)
    add_evaluate_parser(commands)
    add_metrics_parser(commands)
    add_analyze_parser(commands)
    return parser


def main(argv=None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv, gin_bindings = _split_gin_flags(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    args.gin_bindings = gin_bindings
    try:
        args.run(args)
    except UserError as e:
        # gin appends "In call to configurable ..." lines to errors raised inside configurables.
        print(f"gtr-jax {args.command}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gtr-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
