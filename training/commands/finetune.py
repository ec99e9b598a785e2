"""`lmindexer finetune`: fine-tune for retrieval, or train the item-token recommender.

- `--task recommendation --items ITEMS --sequences SEQUENCES --ids IDS_DIR [--preset cpu] --out MODEL_DIR`:
  the item-token recommender (`training.recommendation`) on any P5-format dataset; presets
  `training/configs/recommender-<preset>.toml`. Writes recommender.json, model.safetensors,
  items.npz and train/ (the loop's checkpoint; a re-run resumes).
- `--dataset cranfield --ids DIR --out DIR`: the semantic-ID network fine-tuned for retrieval on
  Cranfield (`--dataset beauty` exits 2: Beauty recommendation is `--task recommendation`). Writes
  network/ (the fine-tuned network), finetune.json (task, dataset, collection, data folder, ID
  source, settings, cold-start documents, loss history) and, while training, checkpoint/ (a re-run
  resumes).
- `--smart DIR --ids DIR --out DIR`: the same on any SMART collection by its folder (Cranfield's or
  CISI's layout, `training.data.smart`; split: `collection_query_split`). `--smart` and `--dataset`
  exclude each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.config import load_config, preset_path
from training.data.amazon import BEAUTY_ITEMS, BEAUTY_SEQUENCES
from training.downstream.experiment import DATASETS, finetune_task, load_task, smart_task
from training.downstream.finetune import FinetuneConfig
from training.downstream.tasks import load_id_source
from training.errors import ConfigError
from training.recommendation.run import fit
from training.recommendation.settings import RecommenderSettings

HELP = "Fine-tune the indexer for retrieval or train the recommender."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=("retrieval", "recommendation"), default=None,
                        help="recommendation: the item-token recommender on --items/--sequences. "
                             "Without it, --dataset cranfield or --smart DIR (retrieval).")
    collection = parser.add_mutually_exclusive_group()
    collection.add_argument("--dataset", choices=(*DATASETS, "beauty"), default=None,
                            help="cranfield (retrieval). Beauty recommendation is --task recommendation.")
    collection.add_argument("--smart", type=Path, default=None, metavar="DIR",
                            help="Retrieval on any SMART collection's folder (Cranfield's or CISI's layout: "
                                 "*.all*, *.qry, *qrel* or *.REL); queries with a relevant judgment split "
                                 "train/dev/test 0.55/0.11/0.34, seeded (Cranfield: its fixed split).")
    parser.add_argument("--data", type=Path, default=None,
                        help="--dataset's folder (default: the vendored copy in data/).")
    parser.add_argument("--items", type=Path, default=None,
                        help="--task recommendation: items JSONL(.gz), P5 format (default: vendored Beauty).")
    parser.add_argument("--sequences", type=Path, default=None,
                        help="--task recommendation: user sequences 'USER ITEM ...' (default: vendored Beauty).")
    parser.add_argument("--ids", type=Path, required=True, help="A learn-ids output directory (ids.jsonl, run.json).")
    parser.add_argument("--out", type=Path, required=True, help="Output directory (re-running resumes).")
    parser.add_argument("--preset", default=None,
                        help="Preset name or TOML path: finetune presets (tiny, quick, cpu, paper; default quick) or, "
                             "with --task recommendation, recommender presets (tiny, cpu, gpu; default cpu).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one setting (repeatable), e.g. --set steps=100.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")


def run(args: argparse.Namespace) -> int:
    if args.smart is not None:
        if args.task == "recommendation":
            raise ConfigError("--smart names a retrieval collection; --task recommendation reads --items and "
                              "--sequences")
        if args.data is not None:
            raise ConfigError("--data goes with --dataset; --smart names the collection's folder itself")
    if args.task == "recommendation":
        return _recommendation(args)
    if args.smart is None:
        if args.dataset == "beauty":
            raise ConfigError("Beauty recommendation is `lmindexer finetune --task recommendation` (the item-token "
                              "recommender; --items/--sequences default to the vendored Beauty); --dataset takes "
                              "cranfield")
        if args.dataset is None:
            raise ConfigError("--dataset or --smart is required unless --task recommendation")
        if args.task == "retrieval" and args.dataset != "cranfield":
            raise ConfigError(f"--task retrieval needs --dataset cranfield, got {args.dataset}")
    config = load_config(FinetuneConfig, preset_path("finetune", args.preset or "quick"), args.overrides)
    if args.smart is not None:
        data_dir = args.smart.resolve()  # finetune.json's data_dir: evaluate and export rebuild the task from it
        task = smart_task(data_dir)
    else:
        data_dir = args.data
        task = load_task(args.dataset, args.data, config)
    source = load_id_source(args.ids)
    record = finetune_task(task, source, config, args.out, progress=not args.no_progress, data_dir=data_dir)
    losses = record["training"]["losses"]
    tail = losses[-20:]
    print(f"fine-tuned {record['training']['steps']} steps on {record['training']['examples']} {record['collection']} "
          f"pairs ({record['method']} IDs, {record['initialised_from']}); loss {losses[0]:.3f} -> "
          f"{sum(tail) / len(tail):.3f}; {len(record['cold_documents'])} documents held out -> {args.out}")
    return 0


def _recommendation(args: argparse.Namespace) -> int:
    settings = load_config(RecommenderSettings, preset_path("recommender", args.preset or "cpu"), args.overrides)
    record = fit(args.items or BEAUTY_ITEMS, args.sequences or BEAUTY_SEQUENCES, args.ids, settings, args.out,
                 progress=not args.no_progress)
    training = record["training"]
    print(f"trained the recommender ({record['ids_method']} IDs, {record['num_items']} items, "
          f"{len(record['cold_items'])} cold) for {training['epochs']} epochs in {record['train_seconds']:.0f} s; "
          f"best validation NDCG@10 {training['best_valid_ndcg@10']:.4f} (epoch {training['best_epoch']}, "
          f"{training['validation_users']} users) -> {args.out}")
    return 0
