"""Benchmark the recommendation baselines (most-popular, SASRec) on Amazon Beauty (P5 split).

    nice -n 10 python benchmarks/bench_recommendation_baselines.py --method popularity
    nice -n 10 python benchmarks/bench_recommendation_baselines.py --method sasrec \\
        --set time_budget_s=600

Writes `benchmarks/results/recommendation_<method>.json`: Recall@5/10 and NDCG@5/10 on
validation and test (leave-one-out, whole catalogue ranked, history items not removed), the
settings, training time, the machine (platform, CPU count, Python / torch versions) and the wall
time. The SASRec checkpoint of the best epoch goes to `--work-dir`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import tomllib
from pathlib import Path
from typing import Any

from training.baselines.recommendation import run_recommendation_baseline

RESULTS = Path(__file__).resolve().parent / "results"


def parse_value(raw: str) -> Any:
    """A `--set` value read as TOML (numbers, booleans, quoted strings, lists), else as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("popularity", "sasrec"), required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="A setting of AmazonSettings or of the method's settings (repeatable).")
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/bench-recommendation"),
                        help="Where the metrics JSON of the run and the SASRec checkpoint go.")
    parser.add_argument("--out", type=Path, default=None, help="Result JSON (default: benchmarks/results/).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    options = {}
    for item in args.overrides:
        key, _, raw = item.partition("=")
        options[key.strip()] = parse_value(raw.strip())
    started = time.perf_counter()
    report = run_recommendation_baseline(args.method, args.work_dir / args.method, **options)
    report["benchmark"] = {
        "command": f"python benchmarks/bench_recommendation_baselines.py --method {args.method} "
                   + " ".join(f"--set {o}" for o in args.overrides),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = args.out or RESULTS / f"recommendation_{args.method}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    summary = {split: {k: round(v, 4) for k, v in figures.items()}
               for split, figures in report["metrics"].items()}
    print(json.dumps({"method": args.method, **summary, "wall_time_s": report["benchmark"]["wall_time_s"]}))


if __name__ == "__main__":
    main()
