"""`lmindexer evaluate-run`: score a TREC run file against TREC qrels.

    lmindexer evaluate-run --run RUN.trec --qrels QRELS.trec --metrics ndcg@10,recall@10,mrr@10,map@10
    lmindexer evaluate-run ... --json        # {"ndcg@10": 0.35, ...} on stdout

Conventions (relevance = gain > 0, ties by doc_id descending, every query of the qrels counts,
0 for queries the run lacks) are those of `training.metrics`, equal to trec_eval's.
"""

from __future__ import annotations

import argparse
import json

from training.data.trec import read_qrels, read_run
from training.errors import UserInputError
from training.metrics import METRIC_NAMES, evaluate, parse_metric

HELP = "Score a TREC run file against TREC qrels."
DEFAULT_METRICS = "ndcg@10,recall@10,mrr@10,map@10"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="TREC run file: 'qid Q0 docid rank score tag' (.gz is fine).")
    parser.add_argument("--qrels", required=True, help="TREC qrels file: 'qid 0 docid relevance' (.gz is fine).")
    parser.add_argument("--metrics", default=DEFAULT_METRICS,
                        help=f"Comma-separated NAME@K, NAME one of {', '.join(METRIC_NAMES)}. "
                             f"Default: {DEFAULT_METRICS}.")
    parser.add_argument("--json", action="store_true", help="Print JSON (metric name -> mean) instead of a table.")


def _metric_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserInputError("--metrics: no metric named")
    try:
        return [str(parse_metric(name)) for name in names]
    except ValueError as exc:
        raise UserInputError(f"--metrics: {exc}") from None


def run(args: argparse.Namespace) -> int:
    metrics = _metric_list(args.metrics)
    qrels = read_qrels(args.qrels)
    scored_run = read_run(args.run)
    means = evaluate(scored_run, qrels, metrics)
    if args.json:
        print(json.dumps(means, indent=2))
        return 0
    missing = sum(1 for query_id in qrels if query_id not in scored_run)
    width = max(len(name) for name in means)
    print(f"{'metric':<{width}}  mean")
    for name, value in means.items():
        print(f"{name:<{width}}  {value:.4f}")
    print(f"\n{len(qrels)} queries in the qrels ({missing} absent from the run, scored 0); "
          f"{sum(1 for query_id in scored_run if query_id not in qrels)} run-only queries ignored.")
    return 0
