"""Cranfield retrieval on the foundation's fixed test split (75 queries), one run, one JSON:

- the same downstream model (semantic-ID network fine-tuned on the 125 training queries plus
  document-as-query and title-as-query pairs, constrained beam search, beam 20) on LMIndexer,
  rq-VAE and HC IDs of the 1,400 abstracts;
- the foundation's BM25 and dense (all-MiniLM-L6-v2) baselines on the same test queries;
- cold-start figures: relevance judgments on the 5% of documents held out of fine-tuning;
- per-query latency at beam 20, torch vs onnxruntime, on the CPU.

`rows`: one per (model, ID kind, search mode): {"model", "ids", "mode" (generative | hybrid, the
hybrid weight chosen on dev), "test", "dev", "train_seconds", "default" (the mode better on dev)},
and BM25 and dense as rows of their own (mode = their name; dev not run).

nDCG@10 (graded gains), Recall@10 and MRR@10 with training.metrics. Without a GPU this runs a
reduced CPU preset, labelled in the JSON. Work files go to --work; re-running resumes.

    nice -n 10 python benchmarks/bench_retrieval.py --out benchmarks/results/retrieval-cpu.json

`--smart DIR` runs the same on any SMART collection's folder (`training.downstream.experiment.smart_task`:
Cranfield's or CISI's layout; test = its part of `collection_query_split`); the work folder and the
output then default to runs/bench-retrieval-NAME and results/retrieval-NAME-cpu.json, NAME the
collection's name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="Result JSON (default: results/retrieval-cpu.json; --smart: retrieval-NAME-cpu.json).")
    parser.add_argument("--work", type=Path, default=None,
                        help="Work folder (default: runs/bench-retrieval; --smart: runs/bench-retrieval-NAME).")
    collection = parser.add_mutually_exclusive_group()
    collection.add_argument("--data", type=Path, default=None, help="Cranfield folder (default: data/cranfield).")
    collection.add_argument("--smart", type=Path, default=None, metavar="DIR",
                            help="Any SMART collection's folder instead of Cranfield (Cranfield's or CISI's layout).")
    parser.add_argument("--methods", default="lmindexer,rqvae,hc")
    parser.add_argument("--ids-preset", default="quick", help="learn-ids preset of every method, or a default "
                        "with per-method exceptions: quick,lmindexer=cpu-encoder")
    parser.add_argument("--ids-set", dest="ids_overrides", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="learn-ids setting over one method's preset, e.g. --ids-set lmindexer:num_threads=1")
    parser.add_argument("--finetune-preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="finetune setting overrides, e.g. --set steps=300")
    parser.add_argument("--baselines", default="bm25,dense", help="Baselines run here (comma-separated).")
    parser.add_argument("--dense-results", type=Path, default=RESULTS / "dense_cranfield.json",
                        help="When dense is not run here: the foundation's dense benchmark JSON, whose test-split "
                             "figures are reused (dense retrieval has no training: it is deterministic).")
    parser.add_argument("--latency-queries", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from training.baselines.recommendation import machine_description
    from training.baselines.retrieval import run_retrieval_baseline
    from training.config import config_to_dict, load_config, preset_path
    from training.downstream.experiment import (
        DATA_DIR,
        compare_id_methods,
        cranfield_task,
        ids_overrides_for,
        ids_presets_for,
        smart_task,
    )
    from training.downstream.finetune import FinetuneConfig

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    config = load_config(FinetuneConfig, preset_path("finetune", args.finetune_preset),
                         [*args.overrides, f"num_threads={args.threads}", "eval_max_queries=0"])
    smart = args.smart is not None
    data_dir = (args.smart or args.data or DATA_DIR / "cranfield").resolve()
    task = smart_task(data_dir) if smart else cranfield_task(data_dir)
    # Another collection never shares Cranfield's work folder (its stages resume from what they find there).
    work = args.work or Path("runs/bench-retrieval" + (f"-{task.name}" if smart else ""))
    out = args.out or RESULTS / ("retrieval-cpu.json" if not smart else f"retrieval-{task.name}-cpu.json")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    ids_presets = ids_presets_for(args.ids_preset, methods)
    ids_overrides = ids_overrides_for(args.ids_overrides, methods)
    generative = compare_id_methods(task, work, methods, ids_presets, ids_overrides, config, split="test",
                                    latency_queries=args.latency_queries, progress=False, data_dir=data_dir)
    baselines = {}
    baseline_sources = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in [b.strip() for b in args.baselines.split(",") if b.strip()]:
            report = run_retrieval_baseline(method, scratch, split="test", data_dir=data_dir, smart=smart)
            baselines[method] = report["metrics"]
            baseline_sources[method] = "this run"
    # dense_cranfield.json holds Cranfield's figures only
    if "dense" not in baselines and task.name == "cranfield" and args.dense_results.is_file():
        baselines["dense"] = json.loads(args.dense_results.read_text())["results"]["test"]["metrics"]
        baseline_sources["dense"] = f"{args.dense_results.name} (test split; deterministic, not re-run here)"
    metrics = ("ndcg@10", "recall@10", "mrr@10")
    test_queries = len(task.eval_sets["test"].query_ids)
    benchmark = (f"{task.name} retrieval ({data_dir}), test split ({test_queries} queries; {task.split_rule})"
                 if task.name != "cranfield" else "cranfield retrieval, fixed test split (75 queries, seed 20240721)")
    # one row per (model, ID kind, mode); the baselines as rows of their own (mode = their name)
    rows = [{"model": "generative retrieval", "ids": m, "mode": mode, "test": figures["test"], "dev": figures["dev"],
             "train_seconds": generative[m]["seconds"]["finetune"], "default": mode == generative[m]["default_mode"]}
            for m in methods for mode, figures in generative[m]["modes"].items()]
    rows += [{"model": b, "ids": None, "mode": b, "test": {k: baselines[b][k] for k in metrics}, "dev": None,
              "train_seconds": 0.0, "source": baseline_sources[b]} for b in baselines]
    machine = {**machine_description(), "load_average_at_start": load_at_start}
    report = {
        "benchmark": benchmark,
        "rows": rows,
        "preset": "cpu-reduced" if args.finetune_preset != "paper" else "paper",
        "reduced": {"learn_ids_preset": args.ids_preset, "finetune_preset": args.finetune_preset,
                    "finetune_steps": config.steps,
                    "why": (f"a CPU machine ({os.cpu_count()} cores, no CUDA device)" if not machine["cuda"]
                            else "the reduced preset was asked for")},
        "metrics_test": {**{m: generative[m]["test"] for m in methods},
                         **{b: {k: baselines[b][k] for k in metrics} for b in baselines}},
        "baseline_sources": baseline_sources,
        "cold_start_test": {m: {"figures": generative[m]["cold_start"], "queries": generative[m]["cold_start_queries"],
                                "assignment": generative[m]["cold_start_assignment"]} for m in methods},
        "warm_test": {m: generative[m]["warm"] for m in methods},
        "generative_details": {m: {k: v for k, v in generative[m].items() if k not in ("test", "warm", "cold_start")}
                               for m in methods},
        "latency_per_query_beam20": generative.get("latency"),
        **({"reference_all_225_queries": {"bm25": {"ndcg@10": 0.352, "recall@10": 0.389, "mrr@10": 0.508},
                                          "dense": {"ndcg@10": 0.382, "recall@10": 0.416, "mrr@10": 0.538}}}
           if task.name == "cranfield" else {}),
        "finetune_config": config_to_dict(config),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "machine": machine,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for row in rows:
        print(f"{row['model']:22s} {row['ids']!s:10s} {row['mode']:10s} "
              + "  ".join(f"{k} {v:.4f}" for k, v in row["test"].items()))
    print(f"wrote {out} ({report['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
