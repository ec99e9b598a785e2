"""Rescore a Cranfield baseline's run with ranx, the scorer of the reference figures.

Shared by bench_bm25.py and bench_dense.py: a cross-check of `training.metrics` on the very run
files `lmindexer baseline` wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.data.trec import read_qrels, read_run


def ranx_figures(out_dir: Path, report: dict[str, Any], metrics: Sequence[str]) -> dict[str, float]:
    """The written run rescored by ranx (gain-0 judgments dropped: ranx's relevance starts at 1)."""
    import ranx

    qrels = {q: {d: g for d, g in judged.items() if g > 0}
             for q, judged in read_qrels(out_dir / report["files"]["qrels"]).items()}
    run = read_run(out_dir / report["files"]["run"])
    scores = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), list(metrics), make_comparable=True)
    return {name: float(scores[name]) for name in metrics}
