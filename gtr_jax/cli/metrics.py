"""`gtr-jax metrics`: trec_eval-equal scores of a TREC run file, printed as one JSON object."""

import json

from gtr_jax.eval import metrics


def add_parser(commands):
    """Register `gtr-jax metrics` on the CLI's subparsers."""
    parser = commands.add_parser("metrics", help="trec_eval-equal scores of a TREC run file")
    parser.add_argument("--qrels", required=True, help="TREC qrels (qid iter docid rel) or a BEIR qrels TSV")
    parser.add_argument("--run", dest="run_file", required=True, help="TREC run: qid Q0 docid rank score tag")
    parser.add_argument("--measures",
                        help=f"comma-separated trec_eval names (default: {','.join(metrics.DEFAULT_MEASURES)})")
    parser.add_argument("--per_query", action="store_true", help="one object per query instead of the averages")
    parser.set_defaults(run=run)


def run(args):
    """Score a TREC run file against qrels; print the averages (or each query's scores) as JSON."""
    measures = (tuple(m.strip() for m in args.measures.split(",") if m.strip()) if args.measures
                else metrics.DEFAULT_MEASURES)
    for name in measures:
        metrics.parse_measure(name)
    qrels, run_file = metrics.read_qrels(args.qrels), metrics.read_run(args.run_file)
    if args.per_query:
        queries, values = metrics.per_query(qrels, run_file, measures)
        result = {q: {m: float(values[m][i]) for m in measures} for i, q in enumerate(queries.tolist())}
    else:
        result = metrics.evaluate(qrels, run_file, measures)
    print(json.dumps(result, indent=2))
