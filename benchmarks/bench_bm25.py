"""BM25 on Cranfield: all 225 queries and the fixed test split, title + text, against the reference.

    nice -n 10 python benchmarks/bench_bm25.py            # writes benchmarks/results/bm25_cranfield.json

Each figure comes from `training.baselines.retrieval.run_retrieval_baseline`, the code behind
`lmindexer baseline --dataset cranfield --method bm25`, and is rescored with ranx (the scorer of
the reference figures) as a cross-check of `training.metrics`. Variants (stemming, abstract
only) are reported beside the default, which is the reference setting (bm25s, English stop
words, no stemmer).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ranx_crosscheck import ranx_figures  # noqa: E402  (benchmarks/, the script's folder)

from training.baselines.retrieval import run_retrieval_baseline  # noqa: E402

logger = logging.getLogger("bench_bm25")

# shared/data/README.md: all 225 queries, title + text, bm25s with English stop words, ranx.
REFERENCE = {"ndcg@10": 0.352, "recall@10": 0.389, "mrr@10": 0.508}
METRICS = ("ndcg@10", "recall@10", "mrr@10", "map@10")
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "stemmer_english": {"stemmer": "english"},
    "abstract_only": {"include_title": False},
}


def machine() -> dict[str, Any]:
    import bm25s
    import numpy as np

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "bm25s": bm25s.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bm25_cranfield.json")
    parser.add_argument("--no-ranx", action="store_true", help="Skip the ranx cross-check (slow first compile).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        for variant, options in VARIANTS.items():
            for split in ("all", "test"):
                out_dir = Path(work) / variant
                report = run_retrieval_baseline("bm25", out_dir, split=split, **options)
                entry = {"metrics": report["metrics"], "num_queries": report["num_queries"],
                         "settings": report["settings"], "wall_time_seconds": report["wall_time_seconds"]}
                if not args.no_ranx:
                    entry["ranx_metrics"] = ranx_figures(out_dir, report, METRICS)
                results.setdefault(variant, {})[split] = entry
    headline = results["default"]["all"]["metrics"]
    document = {
        "benchmark": "BM25 (bm25s) on Cranfield 1400",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "nice -n 10 python benchmarks/bench_bm25.py",
        "reference_all_queries": REFERENCE,
        "difference_from_reference": {name: round(headline[name] - value, 4) for name, value in REFERENCE.items()},
        "within_0.02_of_reference": all(abs(headline[n] - v) < 0.02 for n, v in REFERENCE.items()),
        "results": results,
        "machine": machine(),
        "wall_time_seconds": round(time.perf_counter() - started, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    for variant, by_split in results.items():
        for split, entry in by_split.items():
            figures = ", ".join(f"{k} {v:.4f}" for k, v in entry["metrics"].items())
            print(f"{variant:<16} {split:<4} ({entry['num_queries']} queries): {figures}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
