"""`lmindexer evaluate`: decode a fine-tuned model's evaluation queries with constrained beam search.

A recommender (`lmindexer finetune --task recommendation`, a directory with recommender.json):
Recall@5, NDCG@5, Recall@10, NDCG@10 of the `generative` and `hybrid` rankings (the hybrid weight
chosen on validation), for all users and for those whose target is a warm or a cold item; written
to DIR/eval/metrics.json.

Otherwise:

Reads a `lmindexer finetune` output; indexes its cold-start documents (greedy codes of the indexer
+ next free counter), writes DIR/eval/<split>.run (TREC), DIR/eval/ids.jsonl and
DIR/eval/metrics.json (all queries, warm and cold documents separately). A retriever is also scored
in the hybrid search mode (DIR/eval/<split>-hybrid.run; its weight and the default search mode are
chosen on the validation split, which is evaluated first whatever --splits says) and by the dense
ranking alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Evaluate a fine-tuned model with constrained beam search."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="A `lmindexer finetune` output directory.")
    parser.add_argument("--splits", default="valid,test", help="Comma-separated splits. Default: valid,test.")
    parser.add_argument("--beam-size", type=int, default=None, help="Beam width (default: the model's setting, 20).")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="Evaluate a seeded sample of at most this many queries (0 = all).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")


def run(args: argparse.Namespace) -> int:
    # deferred (measured: torch and transformers take 3-6 s to import): `lmindexer evaluate --help` and argument
    # errors import this module to build the parser and must answer at once
    from training.recommendation.run import RECORD_FILE

    if (args.model / RECORD_FILE).is_file():
        return _recommendation(args)
    from training.downstream.experiment import evaluate_task, load_finetuned, load_task

    record, config, _ = load_finetuned(args.model)
    task = load_task(record["dataset"], record.get("data_dir"), config)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    results = evaluate_task(task, args.model, splits=splits, beam_size=args.beam_size,
                            max_queries=args.max_queries, progress=not args.no_progress)
    for split in splits:
        figures = results[split]
        print(f"{split}: {figures['queries']} queries  " + "  ".join(f"{k} {v:.4f}" for k, v in figures["all"].items()))
        for part in ("warm", "cold"):
            print(f"  {part} ({figures[f'{part}_queries']} queries): "
                  + "  ".join(f"{k} {v:.4f}" for k, v in figures[part].items()))
        for ranking in ("hybrid", "dense"):
            if ranking in figures:
                print(f"  {ranking}: " + "  ".join(f"{k} {v:.4f}" for k, v in figures[ranking]["all"].items()))
    if "hybrid_weight" in results:
        print(f"hybrid weight {results['hybrid_weight']:g}, default search mode {results['default_mode']} "
              f"(chosen on {results['hybrid_chosen_on']})")
    print(json.dumps(results["cold_start"]))
    return 0


def _recommendation(args: argparse.Namespace) -> int:
    # deferred like run()'s imports (torch)
    from training.recommendation.run import evaluate_model

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    results = evaluate_model(args.model, splits, beam_size=args.beam_size, max_users=args.max_queries or 0)
    print(f"hybrid weight {results['hybrid_weight']:g} (chosen on validation); beam {results['beam_size']}; "
          f"{results['users']} users")
    for split in ("valid", "test"):
        if split not in results:
            continue
        figures = results[split]
        for part in ("all", "warm", "cold"):
            if figures[part] is None:
                continue
            users = figures["warm_users"] + figures["cold_users"] if part == "all" else figures[f"{part}_users"]
            for ranking in ("generative", "hybrid"):
                print(f"{split:5s} {part:4s} ({users:6d} users) {ranking:10s} "
                      + "  ".join(f"{k} {v:.4f}" for k, v in figures[part][ranking].items()))
    print(f"wrote {args.model / 'eval' / 'metrics.json'}")
    return 0
