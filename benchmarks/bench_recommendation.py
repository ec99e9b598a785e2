"""Beauty sequential recommendation (P5 leave-one-out, test split), one run, one JSON:

- the same downstream model (the semantic-ID network fine-tuned on history text -> next item's ID,
  decoded with constrained beam search, beam 20) trained on LMIndexer, rq-VAE and HC IDs;
- the foundation's most-popular and SASRec baselines on the same data;
- cold-start figures: test users whose target is one of the 5% of items held out of fine-tuning;
- per-query latency at beam 20, torch vs onnxruntime, on the CPU.

Recall@5/10 and NDCG@5/10 (training.metrics; with one target per user they equal the baselines'
rank formulas). Without a GPU this runs a reduced CPU preset, labelled in the JSON: a subset of the
catalogue (the most popular items, users filtered to them), the quick learn-ids presets and a short
fine-tuning. Work files go to --work; re-running resumes where it stopped.

    nice -n 10 python benchmarks/bench_recommendation.py --out benchmarks/results/recommendation-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"lmindexer_paper": {"recall@5": 0.0415, "ndcg@5": 0.0262},
         "tiger_paper": {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "recommendation-cpu.json")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-recommendation"))
    parser.add_argument("--num-items", type=int, default=500, help="Most popular items kept (0 = all 12,101).")
    parser.add_argument("--max-users", type=int, default=1500, help="Users kept at most.")
    parser.add_argument("--methods", default="lmindexer,rqvae,hc")
    parser.add_argument("--ids-preset", default="quick", help="learn-ids preset of every method, or a default "
                        "with per-method exceptions: quick,lmindexer=cpu-encoder")
    parser.add_argument("--ids-set", dest="ids_overrides", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="learn-ids setting over one method's preset, e.g. --ids-set lmindexer:num_threads=1")
    parser.add_argument("--finetune-preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="finetune setting overrides, e.g. --set steps=300")
    parser.add_argument("--eval-users", type=int, default=0,
                        help="Score a seeded sample of this many test users (0 = all); the baselines are scored "
                             "on the same users.")
    parser.add_argument("--sasrec-seconds", type=float, default=300.0)
    parser.add_argument("--latency-queries", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from training.baselines.popularity import PopularitySettings, run_popularity
    from training.baselines.recommendation import RecData, machine_description
    from training.baselines.sasrec import SASRecSettings, train_sasrec
    from training.config import build_config, config_to_dict, load_config, preset_path
    from training.data.amazon import load_amazon
    from training.downstream.demo import beauty_subset
    from training.downstream.experiment import beauty_task, compare_id_methods, ids_overrides_for, ids_presets_for
    from training.downstream.finetune import FinetuneConfig

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    config = load_config(FinetuneConfig, preset_path("finetune", args.finetune_preset),
                         [*args.overrides, f"num_threads={args.threads}", f"eval_max_queries={args.eval_users}"])
    dataset = beauty_subset(args.num_items, args.max_users) if args.num_items else load_amazon()
    task = beauty_task(dataset, max_history=config.max_history, train_examples=config.train_examples)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    ids_presets = ids_presets_for(args.ids_preset, methods)
    ids_overrides = ids_overrides_for(args.ids_overrides, methods)
    generative = compare_id_methods(task, args.work, methods, ids_presets, ids_overrides, config, split="test",
                                    latency_queries=args.latency_queries, progress=False)

    data = RecData.from_dataset(dataset)
    if args.eval_users and args.eval_users < data.num_users:
        # The users evaluate_task scores (same seed, same order), so every model is scored on the same users;
        # SASRec still trains on every user's training interactions.
        chosen = sorted(random.Random(config.seed).sample(range(data.num_users), args.eval_users))
        data = dataclasses.replace(
            data, user_ids=tuple(data.user_ids[i] for i in chosen),
            valid_histories=[data.valid_histories[i] for i in chosen], valid_targets=data.valid_targets[chosen],
            test_histories=[data.test_histories[i] for i in chosen], test_targets=data.test_targets[chosen])
    popularity = run_popularity(data, PopularitySettings())
    sasrec = train_sasrec(data, build_config(SASRecSettings, {"time_budget_s": args.sasrec_seconds,
                                                               "num_threads": args.threads, "progress": False}))
    report = {
        "benchmark": "beauty sequential recommendation, P5 leave-one-out, test split",
        "preset": "cpu-reduced" if args.num_items or args.finetune_preset != "paper" else "paper",
        "reduced": {"catalogue": f"{len(dataset.items)} most popular items of 12,101, users filtered to them"
                                 if args.num_items else "full",
                    "users": len(dataset.sequences), "evaluated_test_users": args.eval_users or len(dataset.sequences),
                    "learn_ids_preset": args.ids_preset,
                    "finetune_preset": args.finetune_preset, "finetune_steps": config.steps,
                    "why": "no GPU in this session; 2 shared CPU cores"},
        "metrics_test": {**{m: generative[m]["test"] for m in methods},
                         "most_popular": popularity["metrics"]["test"], "sasrec": sasrec["metrics"]["test"]},
        "cold_start_test": {m: {"figures": generative[m]["cold_start"], "users": generative[m]["cold_start_queries"],
                                "assignment": generative[m]["cold_start_assignment"]} for m in methods},
        "warm_test": {m: generative[m]["warm"] for m in methods},
        "generative_details": {m: {k: v for k, v in generative[m].items() if k not in ("test", "warm", "cold_start")}
                               for m in methods},
        "latency_per_query_beam20": generative.get("latency"),
        "sasrec_details": {k: v for k, v in sasrec.items() if k not in ("metrics", "history")},
        "reference_full_catalogue": PAPER,
        "finetune_config": config_to_dict(config),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "machine": {**machine_description(), "load_average_at_start": load_at_start},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for name, figures in report["metrics_test"].items():
        print(f"{name:14s} " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    print(f"wrote {args.out} ({report['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
