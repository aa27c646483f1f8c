"""`gtr-jax mine`: hard negatives for each (query, relevant passage) of a task, by BM25 or by a model."""

import os
import resource
import time

from gtr_jax.cli import gin_flags, startup
from gtr_jax.errors import UserError

RANK_HELP = ("LO:HI, 1-based and both included: negatives are drawn from the candidates ranked LO to HI "
             "once the filters have removed theirs (known positives, texts equal to a positive's, and with "
             "--max_score_ratio candidates scoring too close to the positive); default 1:100")


def add_parser(commands):
    """Register `gtr-jax mine` on the CLI's subparsers."""
    parser = commands.add_parser("mine", help="mine hard negatives with BM25 or a model, false negatives filtered")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="a registered task with an id'd corpus: demo_train, msmarco_train_pairs "
                                       "(--gin.MSMARCO_DIR), beir_<name> (--gin.BEIR_DIR; its evaluation split)")
    source.add_argument("--beir_dir", help="a BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)")
    parser.add_argument("--split", help="with --beir_dir: the qrels split to mine (default: train)")
    parser.add_argument("--miner", choices=("bm25", "model"), required=True,
                        help="bm25: bm25s with gtr-jax evaluate's settings; model: a checkpoint's own ranking")
    parser.add_argument("--model_dir", help="with --miner=model: the model directory")
    parser.add_argument("--step", type=int, help="with --miner=model: checkpoint step (default: newest)")
    parser.add_argument("--vocab", help="with --miner=model: SentencePiece model (default: MODEL_DIR/spiece.model)")
    parser.add_argument("--batch_size", type=int, default=64, help="with --miner=model: texts per encoding batch")
    parser.add_argument("--embeddings_dir", help="with --miner=model: a local directory for the corpus embeddings, "
                                                 "in shards; an interrupted run resumes from them")
    parser.add_argument("--num_negatives", type=int, default=8, help="negatives per (query, positive) row (default 8)")
    parser.add_argument("--rank_range", default="1:100", help=RANK_HELP)
    parser.add_argument("--max_score_ratio", type=float,
                        help="drop candidates scoring above this fraction of the row's positive's score "
                             "(NV-Retriever's TopK-PercPos, e.g. 0.95); default: off")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (with each query and positive id)")
    parser.add_argument("--max_depth", type=int, default=10000,
                        help="candidates looked at per query at most, to find HI that pass the filters")
    parser.add_argument("--query_chunk", type=int, default=16384,
                        help="queries mined at a time (memory: their candidate lists); with --miner=bm25 and several "
                             "processes, the unit of work each process takes in turn")
    parser.add_argument("--output", required=True,
                        help="negatives file: .jsonl[.gz] (JSONL rows) or .tsv[.gz] (MS MARCO qidpidtriples, "
                             "integer ids); the summary goes to OUTPUT.summary.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    startup.add_distributed_arguments(parser)
    gin_flags.add_gin_arguments(parser, file_help="gin files (data.gin is read first: its directory macros apply)",
                                required=False, example="--gin.MSMARCO_DIR=/data/msmarco")
    parser.set_defaults(run=run)


def _check_flags(args) -> str:
    """The negatives file format; flag mistakes raise before anything is loaded."""
    from gtr_jax.data import negatives_file

    model_flags = [f"--{name}" for name in ("model_dir", "step", "vocab", "embeddings_dir") if getattr(args, name)]
    if args.miner == "model" and not args.model_dir:
        raise UserError("--miner=model needs --model_dir")
    if args.miner == "bm25" and model_flags:
        raise UserError(f"{', '.join(model_flags)}: only with --miner=model")
    if args.split and not args.beir_dir:
        raise UserError("--split goes with --beir_dir (a registered task has its own split)")
    directory = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: output directory does not exist")
    return negatives_file.file_format(args.output)


def _load(args):
    """(eval set, a description of it) of --task or --beir_dir."""
    if args.beir_dir:
        from gtr_jax.data.sources import beir

        split = args.split or "train"
        return beir.eval_set(args.beir_dir, split), {"beir_dir": args.beir_dir, "split": split}
    startup.register_tasks()
    from gtr_jax.eval import evaluation

    gin_flags.parse_gin(["data.gin", *args.gin_file], args.gin_bindings, args.gin_search_paths)
    return evaluation.load_task(args.task), {"task": args.task}


def _miner(args, eval_set, source: dict):
    """(miner, a description of it) for --miner."""
    from gtr_jax.mining import candidates

    progress = not args.quiet
    if args.miner == "bm25":
        from gtr_jax.eval import bm25

        return candidates.Bm25Miner(eval_set, progress), {"name": "bm25", "bm25": bm25.settings()}
    from gtr_jax.eval import encoding
    from gtr_jax.train import checkpoints, partitioning

    encoder = encoding.load_text_encoder(args.model_dir, args.step, args.vocab, mesh=partitioning.make_mesh())
    step = args.step if args.step is not None else checkpoints.checkpoint_manager(args.model_dir, True).latest_step()
    info = {"name": "model", "model_dir": args.model_dir, "step": step}
    miner = candidates.ModelMiner.encode(eval_set, encoder, batch_size=args.batch_size,
                                         embeddings_dir=args.embeddings_dir, fingerprint={**info, **source},
                                         progress=progress)
    return miner, info


def run(args):
    """Mine, then (process 0) write the negatives file and its summary and print the summary."""
    started = time.perf_counter()
    from gtr_jax.mining import mine

    config = mine.MiningConfig(args.num_negatives, *mine.parse_rank_range(args.rank_range), args.max_score_ratio,
                               args.seed, args.max_depth, args.query_chunk)
    file_format = _check_flags(args)
    startup.initialize_distributed(args)
    import jax

    eval_set, source = _load(args)
    if file_format == "qidpidtriples":
        from gtr_jax.data import negatives_file

        negatives_file.check_integer_ids(eval_set.query_ids, "query id")
        negatives_file.check_integer_ids(eval_set.doc_ids, "passage id")
    loaded = time.perf_counter()
    miner, info = _miner(args, eval_set, source)
    indexed = time.perf_counter()
    mined, summary = mine.mine(eval_set, miner, config, progress=not args.quiet)
    if jax.process_index() != 0:
        return
    from gtr_jax.data import negatives_file

    negatives_file.write_negatives(args.output, mined, file_format)
    done = time.perf_counter()
    summary = {"source": source, "miner": info, "documents": len(eval_set.doc_ids), **summary,
               "output": os.path.abspath(args.output), "format": file_format,
               "seconds": {"load": round(loaded - started, 3), "index": round(indexed - loaded, 3),
                           "mine": summary["mining_seconds"], "total": round(done - started, 3)},
               "passages_per_second": round(len(eval_set.doc_ids) / (done - loaded), 1),
               "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    del summary["mining_seconds"]
    mine.write_summary(args.output + ".summary.json", summary)
    print(mine.describe(summary))
    print(f"wrote {args.output} and {args.output}.summary.json")
