"""`lmindexer finetune`: fine-tune the semantic-ID network for retrieval or recommendation.

Writes into --out DIR: network/ (the fine-tuned network), finetune.json (task, dataset, ID source,
settings, cold-start documents, loss history) and, while training, checkpoint/ (a re-run resumes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.config import load_config, preset_path
from training.downstream.experiment import DATASETS, finetune_task, load_task
from training.downstream.finetune import FinetuneConfig
from training.downstream.tasks import load_id_source

HELP = "Fine-tune the indexer for retrieval or recommendation."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, required=True,
                        help="beauty (recommendation, P5 leave-one-out) or cranfield (retrieval, fixed query split).")
    parser.add_argument("--data", type=Path, default=None, help="Dataset folder (default: the vendored copy in data/).")
    parser.add_argument("--ids", type=Path, required=True, help="A learn-ids output directory (ids.jsonl, run.json).")
    parser.add_argument("--out", type=Path, required=True, help="Output directory (re-running resumes).")
    parser.add_argument("--preset", default="quick",
                        help="finetune preset (tiny, quick, cpu, paper) or a TOML path. Default: quick.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one setting (repeatable), e.g. --set steps=100.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")


def run(args: argparse.Namespace) -> int:
    config = load_config(FinetuneConfig, preset_path("finetune", args.preset), args.overrides)
    source = load_id_source(args.ids)
    task = load_task(args.dataset, args.data, config)
    record = finetune_task(task, source, config, args.out, progress=not args.no_progress, data_dir=args.data)
    losses = record["training"]["losses"]
    tail = losses[-20:]
    print(f"fine-tuned {record['training']['steps']} steps on {record['training']['examples']} pairs "
          f"({record['method']} IDs, {record['initialised_from']}); loss {losses[0]:.3f} -> "
          f"{sum(tail) / len(tail):.3f}; {len(record['cold_documents'])} documents held out -> {args.out}")
    return 0
