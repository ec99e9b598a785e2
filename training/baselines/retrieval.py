"""Retrieval baselines end to end on Cranfield or any SMART collection: search, write the run, score
it, write metrics.

`run_retrieval_baseline` is what `lmindexer baseline --dataset cranfield` (or `--smart DIR`) and the
benchmarks in benchmarks/ run. It writes into the output folder:

- `{method}-{split}.trec`: the run (top `top_k` per query, trec_eval's order);
- `qrels-{split}.trec`: the graded qrels of the split's queries, so that
  `lmindexer evaluate-run --run ... --qrels ...` rescores the run by itself;
- `{method}-{split}.metrics.json`: nDCG@10, Recall@10, MRR@10, MAP@10 (means over the split's
  queries, `training.metrics` conventions), the settings, the query split and the wall time.

Splits: "all" (every query of the split: Cranfield's 225; for another collection the queries with a
relevant judgment) or "train" / "dev" / "test" of `collection_query_split` (Cranfield:
`cranfield_query_split`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.data.smart import (
    CRANFIELD_SPLIT_SIZES,
    SMART_SPLIT_SEED,
    collection_query_split,
    read_cranfield,
    read_smart_collection,
)
from training.data.textio import atomic_write_text
from training.data.trec import Run, write_qrels, write_run
from training.errors import ConfigError
from training.metrics import evaluate

logger = logging.getLogger(__name__)

RETRIEVAL_METHODS = ("bm25", "dense")
SPLITS = ("all", *CRANFIELD_SPLIT_SIZES)
DEFAULT_METRICS = ("ndcg@10", "recall@10", "mrr@10", "map@10")
DEFAULT_CRANFIELD_DIR = Path(__file__).resolve().parents[2] / "data" / "cranfield"


def top_k_run(scores: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str], k: int) -> Run:
    """The top `k` documents of each row of `scores` (queries x documents), as a run.

    At the cut, documents tied on score are chosen by doc_id descending, the order in which
    trec_eval (and `training.metrics`) reads ties, so scoring the run equals scoring the full
    ranking truncated at k.
    """
    if scores.shape != (len(query_ids), len(doc_ids)):
        raise ValueError(f"scores have shape {scores.shape}, expected ({len(query_ids)}, {len(doc_ids)})")
    if k < 1:
        raise ValueError("k must be at least 1")
    # tie_key[j] = position of doc j in descending doc_id order; smaller = earlier among ties.
    descending = sorted(range(len(doc_ids)), key=lambda j: doc_ids[j], reverse=True)
    tie_key = np.empty(len(doc_ids), dtype=np.int64)
    tie_key[descending] = np.arange(len(doc_ids))
    k = min(k, len(doc_ids))
    run: Run = {}
    for row, query_id in enumerate(query_ids):
        values = scores[row]
        # Candidates: every document scoring at least the k-th largest score (ties included),
        # then an exact sort of those few by (score desc, doc_id desc).
        kth = np.partition(values, len(values) - k)[len(values) - k]
        candidates = np.flatnonzero(values >= kth)
        order = candidates[np.lexsort((tie_key[candidates], -values[candidates]))][:k]
        run[query_id] = {doc_ids[j]: float(values[j]) for j in order}
    return run


def run_retrieval_baseline(method: str, out_dir: str | Path, split: str = "all",
                           data_dir: str | Path = DEFAULT_CRANFIELD_DIR, top_k: int = 100,
                           include_title: bool = True, stemmer: str | None = None,
                           metrics: Sequence[str] = DEFAULT_METRICS, smart: bool = False) -> dict[str, Any]:
    """Run BM25 or dense retrieval on the `split` queries of Cranfield (`data_dir` holds its files), or with
    `smart=True` of the SMART collection in `data_dir` (`read_smart_collection`); write and return the report."""
    if method not in RETRIEVAL_METHODS:
        raise ConfigError(f"unknown retrieval method {method!r}: expected one of {', '.join(RETRIEVAL_METHODS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    started = time.perf_counter()
    if smart:
        collection = read_smart_collection(data_dir, include_title=include_title)
    else:
        collection = read_cranfield(data_dir, include_title=include_title)
    parts, split_rule = collection_query_split(collection)
    chosen = {q for part in parts.values() for q in part} if split == "all" else set(parts[split])
    queries = [query for query in collection.queries if query.query_id in chosen]
    qrels = {query.query_id: collection.qrels.get(query.query_id, {}) for query in queries}

    settings: dict[str, Any]
    # bm25 and dense import this module (top_k_run): at the top it would be a cycle
    if method == "bm25":
        from training.baselines.bm25 import BM25Index, BM25Settings

        bm25_settings = BM25Settings(stemmer=stemmer)
        index_started = time.perf_counter()
        run = BM25Index(collection.documents, bm25_settings).search(queries, top_k=top_k)
        settings = bm25_settings.as_dict()
    else:
        from training.baselines.dense import DenseIndex, DenseSettings

        dense_settings = DenseSettings()
        index_started = time.perf_counter()
        run = DenseIndex(collection.documents, dense_settings).search(queries, top_k=top_k)
        settings = dense_settings.as_dict()
    search_seconds = time.perf_counter() - index_started

    figures = evaluate(run, qrels, metrics)
    out_dir = Path(out_dir)
    run_path = out_dir / f"{method}-{split}.trec"
    qrels_path = out_dir / f"qrels-{split}.trec"
    write_run(run_path, run, tag=f"lmindexer-{method}")
    write_qrels(qrels_path, qrels)
    report: dict[str, Any] = {
        "dataset": collection.name,
        **({"data_dir": str(Path(data_dir).resolve()), "collection": collection.details} if smart else {}),
        "method": method,
        "split": split,
        "num_queries": len(queries),
        "num_documents": len(collection.documents),
        "metrics": figures,
        "settings": {
            **settings,
            "document_text": "title + text" if include_title else "text",
            "top_k": top_k,
            "split_seed": SMART_SPLIT_SEED,  # the seed of both splits (CRANFIELD_SPLIT_SEED is the same)
            "split_sizes": {name: len(part) for name, part in parts.items()},
            "split_rule": split_rule,
        },
        "files": {"run": run_path.name, "qrels": qrels_path.name},
        "index_and_search_seconds": round(search_seconds, 3),
        "wall_time_seconds": round(time.perf_counter() - started, 3),
    }
    atomic_write_text(out_dir / f"{method}-{split}.metrics.json", json.dumps(report, indent=2) + "\n")
    logger.info("%s on %s/%s (%d queries): %s", method, collection.name, split, len(queries),
                ", ".join(f"{name} {value:.4f}" for name, value in figures.items()))
    return report
