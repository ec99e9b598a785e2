"""Dense retrieval on Cranfield: all-MiniLM-L6-v2, mean pooling, cosine, exact top-k; title + text.

    nice -n 10 python benchmarks/bench_dense.py           # writes benchmarks/results/dense_cranfield.json

The figures on all 225 queries and on the fixed test split come from
`training.baselines.retrieval.run_retrieval_baseline`, the code behind
`lmindexer baseline --dataset cranfield --method dense` (each split is a separate run, as the
command does it: the 1,400 documents are embedded each time). Each run is rescored with ranx,
the scorer of the reference figures, as a cross-check of `training.metrics`.
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

logger = logging.getLogger("bench_dense")

# shared/data/README.md: all 225 queries, title + text, all-MiniLM-L6-v2 cosine, scored with ranx.
REFERENCE = {"ndcg@10": 0.382, "recall@10": 0.416, "mrr@10": 0.538}
METRICS = ("ndcg@10", "recall@10", "mrr@10", "map@10")


def machine() -> dict[str, Any]:
    import numpy as np
    import torch
    import transformers

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.cuda.is_available()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dense_cranfield.json")
    parser.add_argument("--no-ranx", action="store_true", help="Skip the ranx cross-check (slow first compile).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        for split in ("all", "test"):
            report = run_retrieval_baseline("dense", Path(work), split=split)
            entry = {"metrics": report["metrics"], "num_queries": report["num_queries"],
                     "settings": report["settings"], "wall_time_seconds": report["wall_time_seconds"]}
            if not args.no_ranx:
                entry["ranx_metrics"] = ranx_figures(Path(work), report, METRICS)
            results[split] = entry
    headline = results["all"]["metrics"]
    document = {
        "benchmark": "dense retrieval (all-MiniLM-L6-v2, mean pooling, cosine) on Cranfield 1400",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "nice -n 10 python benchmarks/bench_dense.py",
        "reference_all_queries": REFERENCE,
        "difference_from_reference": {name: round(headline[name] - value, 4) for name, value in REFERENCE.items()},
        "within_0.02_of_reference": all(abs(headline[n] - v) < 0.02 for n, v in REFERENCE.items()),
        "results": results,
        "note": "CPU run on a machine shared with other jobs: wall times are upper bounds.",
        "machine": machine(),
        "wall_time_seconds": round(time.perf_counter() - started, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    for split, entry in results.items():
        figures = ", ".join(f"{k} {v:.4f}" for k, v in entry["metrics"].items())
        print(f"{split:<4} ({entry['num_queries']} queries): {figures}  [{entry['wall_time_seconds']:.0f} s]")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
