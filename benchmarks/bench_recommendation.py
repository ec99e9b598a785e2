"""Sequential recommendation on a P5-format dataset (default: Beauty), one run, one JSON.

For each ID kind (`--ids-methods`): learn the IDs (or reuse them: `--ids-dir DIR` holds
`ids-<method>/` learn-ids outputs, e.g. /work/runs-shared), train the item-token recommender
(`lmindexer finetune --task recommendation`, preset `--preset`) and evaluate it under both rankings
(`generative`, `hybrid`; the hybrid weight chosen on validation). On the same split: SASRec (full
cross-entropy) and most-popular. One row per (model, ID kind, ranking):

    {"model", "ids", "ranking", "users", "test": {"recall@5", "ndcg@5", "recall@10", "ndcg@10"},
     "valid": {...}, "train_seconds", "cold_start": {"users", "test": {...}}}

plus the machine's description and its load at the start and the end. The baselines follow the
recommender's `exclude_history` (default: history items removed from every ranking), so every row
is measured under the same protocol. Metrics:
`training.baselines.recommendation.rank_metrics` (one target per user: Recall@k = hit, NDCG@k =
1 / log2(rank + 1)). Work files go to --work; a re-run reuses finished IDs, models and
evaluations.

With `--item-id-embedding METHODS` the recommender is trained, for those ID kinds, both without and
with item ID embeddings (setting `item_id_embedding`: a learned per-item embedding, left out of a token
with probability `item_id_dropout`, absent for cold items), in rows of their own (model "item-token
recommender + item ID embedding"), so the figure's source is known; the other ID kinds follow the
preset (`--set item_id_embedding=false` to turn it off).

    nice -n 10 python benchmarks/bench_recommendation.py --ids-methods rqvae,hc --ids-dir /work/runs-shared
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TIGER = {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=Path, default=None, help="Items JSONL(.gz) (default: vendored Beauty).")
    parser.add_argument("--sequences", type=Path, default=None, help="User sequences (default: vendored Beauty).")
    parser.add_argument("--ids-methods", default="lmindexer,rqvae,hc", help="ID kinds, comma-separated.")
    parser.add_argument("--ids-dir", type=Path, default=None,
                        help="Reuse IDs from DIR/ids-<method>/ where present (learn-ids outputs).")
    parser.add_argument("--ids-preset", default="paper,lmindexer=cpu-encoder",
                        help="learn-ids preset for IDs that are learnt here: a default and per-method exceptions.")
    parser.add_argument("--ids-set", dest="ids_overrides", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="learn-ids setting over one method's preset, e.g. --ids-set lmindexer:num_threads=1")
    parser.add_argument("--preset", default="cpu", help="Recommender preset (training/configs/recommender-*.toml).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Recommender setting overrides, e.g. --set max_epochs=10")
    parser.add_argument("--item-id-embedding", default="", metavar="METHODS",
                        help="ID kinds (comma-separated) for which the recommender is also trained with item ID "
                             "embeddings (rows of their own).")
    parser.add_argument("--baselines", default="sasrec,popularity", help="Baselines to run ('' for none).")
    parser.add_argument("--sasrec-seconds", type=float, default=900.0, help="SASRec's training time budget.")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-recommendation"))
    parser.add_argument("--out", type=Path, default=RESULTS / "recommendation.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from training.baselines.popularity import PopularitySettings, run_popularity
    from training.baselines.recommendation import RecData, machine_description
    from training.baselines.sasrec import SASRecSettings, train_sasrec
    from training.config import build_config, load_config, preset_path
    from training.data.amazon import BEAUTY_ITEMS, BEAUTY_SEQUENCES, items_as_documents
    from training.data.corpus import write_corpus_jsonl
    from training.downstream.experiment import ids_overrides_for, ids_presets_for
    from training.indexing.learning import learn_ids
    from training.recommendation.data import load_dataset
    from training.recommendation.run import RECORD_FILE, evaluate_model, fit
    from training.recommendation.settings import RecommenderSettings

    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    items = args.items or BEAUTY_ITEMS
    sequences = args.sequences or BEAUTY_SEQUENCES
    settings = load_config(RecommenderSettings, preset_path("recommender", args.preset), args.overrides)
    methods = [m.strip() for m in args.ids_methods.split(",") if m.strip()]
    item_id_methods = {m.strip() for m in args.item_id_embedding.split(",") if m.strip()}
    if item_id_methods - set(methods):
        parser.error(f"--item-id-embedding names {sorted(item_id_methods - set(methods))}, not among --ids-methods")
    # every ID kind may take an exception in --ids-preset, whether or not this run learns it
    presets = ids_presets_for(args.ids_preset, sorted({*methods, "lmindexer", "rqvae", "hc"}))
    ids_overrides = ids_overrides_for(args.ids_overrides, methods)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(items, sequences)
    rows: list[dict] = []
    details: dict[str, dict] = {}

    for method in methods:
        ids_dir = args.ids_dir / f"ids-{method}" if args.ids_dir else work / f"ids-{method}"
        learn_seconds = None
        if not (ids_dir / "ids.jsonl").is_file():
            ids_dir = work / f"ids-{method}"
            corpus = work / "corpus.jsonl"
            if not corpus.is_file():
                write_corpus_jsonl(corpus, items_as_documents(dataset))
            t0 = time.perf_counter()
            learn_ids(corpus=corpus, method=method, out_dir=ids_dir, preset=presets[method],
                      overrides=ids_overrides.get(method, ()), overwrite=True)
            learn_seconds = round(time.perf_counter() - t0, 1)
        for with_item_ids in (False, True) if method in item_id_methods else (settings.item_id_embedding,):
            variant = dataclasses.replace(settings, item_id_embedding=with_item_ids)
            name = f"{method}+item-ids" if with_item_ids else method
            model_dir = work / (f"recommender-{method}-item-ids" if with_item_ids else f"recommender-{method}")
            if not (model_dir / RECORD_FILE).is_file():  # written once training has finished: a re-run reuses it
                fit(items, sequences, ids_dir, variant, model_dir, progress=False)
            record = json.loads((model_dir / RECORD_FILE).read_text())
            metrics_path = model_dir / "eval" / "metrics.json"
            if metrics_path.is_file() and "test" in json.loads(metrics_path.read_text()):
                evaluation = json.loads(metrics_path.read_text())  # a re-run reuses the finished evaluation
            else:
                evaluation = evaluate_model(model_dir, ("valid", "test"))
            details[name] = {"ids_dir": str(ids_dir), "learn_ids_seconds": learn_seconds,
                             "item_id_embedding": with_item_ids,
                             "training": {k: v for k, v in record["training"].items() if k != "history"},
                             "history": record["training"]["history"], "hybrid_weight": evaluation["hybrid_weight"],
                             "valid_ndcg@10_by_hybrid_weight": evaluation["valid_ndcg@10_by_hybrid_weight"],
                             "beam_recall_test": evaluation["test"]["beam_recall"],
                             "dense_head_test": evaluation["test"]["all"]["dense"],
                             "load_average_during_training": record["machine"]["load_average_1_5_15min"],
                             "evaluation_seconds": evaluation["seconds"]}
            model = "item-token recommender + item ID embedding" if with_item_ids else "item-token recommender"
            for ranking in ("generative", "hybrid"):
                cold = evaluation["test"]["cold"]
                rows.append({"model": model, "ids": method, "ranking": ranking,
                             "users": evaluation["users"], "test": evaluation["test"]["all"][ranking],
                             "valid": evaluation["valid"]["all"][ranking], "train_seconds": record["train_seconds"],
                             "cold_start": {"users": evaluation["test"]["cold_users"],
                                            "test": cold[ranking] if cold else None},
                             "warm": {"users": evaluation["test"]["warm_users"],
                                      "test": evaluation["test"]["warm"][ranking]}})

    data = RecData.from_dataset(dataset)
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    if "sasrec" in baselines:
        sasrec_path = work / "sasrec.json"  # a re-run reuses the finished baseline
        if sasrec_path.is_file():
            sasrec = json.loads(sasrec_path.read_text())
        else:
            t0 = time.perf_counter()
            sasrec = train_sasrec(data, build_config(SASRecSettings, {
                "time_budget_s": args.sasrec_seconds, "num_threads": settings.num_threads or 2, "progress": False,
                "exclude_history": settings.exclude_history}))
            sasrec["train_seconds"] = round(time.perf_counter() - t0, 1)
            sasrec["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
            sasrec_path.write_text(json.dumps(sasrec, indent=2) + "\n", encoding="utf-8")
        rows.append({"model": "SASRec (full cross-entropy)", "ids": None, "ranking": "full catalogue",
                     "users": data.num_users, "test": sasrec["metrics"]["test"], "valid": sasrec["metrics"]["valid"],
                     "train_seconds": sasrec["train_seconds"]})
        details["sasrec"] = {k: v for k, v in sasrec.items() if k not in ("metrics", "epochs")}
    if "popularity" in baselines:
        popularity = run_popularity(data, PopularitySettings(exclude_history=settings.exclude_history))
        rows.append({"model": "most popular", "ids": None, "ranking": "full catalogue", "users": data.num_users,
                     "test": popularity["metrics"]["test"], "valid": popularity["metrics"]["valid"],
                     "train_seconds": 0.0})

    report = {
        "benchmark": "sequential recommendation, P5 leave-one-out (last item test, the one before validation), "
                     "whole catalogue",
        "items": str(items), "sequences": str(sequences), "num_items": len(dataset.items),
        "num_users": len(dataset.sequences), "recommender_preset": args.preset, "overrides": args.overrides,
        "exclude_history": settings.exclude_history,
        "rows": rows,
        "details": details,
        "reference": {"tiger_paper_beauty": TIGER},
        "wall_time_s": round(time.perf_counter() - started, 1),
        "machine": {**machine_description(), "load_average_at_start": load_at_start},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot = write_plot(report, args.out.with_suffix(".png"))
    for row in rows:
        print(f"{row['model']:44s} {row['ids']!s:10s} {row['ranking']:14s} "
              + "  ".join(f"{k} {v:.4f}" for k, v in row["test"].items()))
    print(f"wrote {args.out}{f' and {plot}' if plot else ''} ({report['wall_time_s']:.0f} s)")


def write_plot(report: dict, path: Path) -> Path | None:
    """Grouped bars of each row's test Recall@10 and NDCG@10, TIGER's published figures as dashed lines;
    None (and no file) without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = report["rows"]
    labels = [f"{r['model'].replace('item-token recommender', 'item-token')}\n{r['ids'] or ''} {r['ranking']}"
              for r in rows]
    figure = Figure(figsize=(9, 1.2 + 0.45 * len(rows)))
    axes = figure.add_subplot()
    for offset, (metric, colour) in enumerate((("recall@10", "tab:blue"), ("ndcg@10", "tab:orange"))):
        axes.barh([i + 0.4 * offset for i in range(len(rows))], [r["test"][metric] for r in rows], height=0.4,
                  color=colour, label=f"test {metric}")
        axes.axvline(TIGER[metric], color=colour, linestyle="--", linewidth=1, label=f"TIGER {metric} (paper)")
    axes.set_yticks([i + 0.2 for i in range(len(rows))], labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("full test set, one target per user")
    axes.set_title(f"Sequential recommendation, {report['num_users']:,} users, {report['num_items']:,} items",
                   fontsize=9)
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


if __name__ == "__main__":
    main()
