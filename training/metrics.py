"""Ranking metrics (Recall, NDCG, MAP, MRR, Hit at a cutoff k) and AMI, with trec_eval's conventions.

Every metric equals a reference implementation (pytrec_eval / trec_eval, ir-measures, ranx for
inputs without ties; scikit-learn for AMI); the property tests in tests/training/test_metrics.py
check that on random inputs.

Definitions, for one query with judgments `qrels[q]` (doc_id -> integer gain) and a ranking:

- relevant: gain > 0. A judged pair with gain <= 0 is non-relevant and contributes gain 0
  (trec_eval would subtract a negative gain in DCG; ranx and we clip it at 0). R = the number
  of relevant documents of the query.
- ranking: the run's documents sorted by score descending, ties broken by doc_id descending
  (string order). That is trec_eval's order (and so pytrec_eval's and ir-measures'); the rank
  column of a run file is ignored. Only the first k ranks count.
- recall@k   = (relevant documents in the top k) / R                       (trec_eval recall_k)
- ndcg@k     = DCG@k / IDCG@k, DCG@k = sum over ranks i <= k of gain_i / log2(i + 1) (linear
  gains, Järvelin & Kekäläinen), IDCG@k = the DCG@k of the judged gains sorted descending
  (trec_eval ndcg_cut_k; ranx ndcg@k)
- map@k      = (sum of precision@i over the ranks i <= k holding a relevant document) / R; the
  divisor is R, not min(R, k) (trec_eval map_cut_k; ranx map@k)
- mrr@k      = 1 / (rank of the first relevant document) if it is within k, else 0 (trec_eval
  recip_rank, cut at k; ranx mrr@k. ir-measures' RR@k breaks score ties another way, so it can
  differ on tied scores)
- hit@k      = 1 if a relevant document is within the top k, else 0 (trec_eval success_k;
  ir-measures Success@k; ranx hit_rate@k)

Which queries count: every query of the qrels (a query that appears only in the run is ignored,
as in trec_eval). A query of the qrels that the run lacks, or whose judgments hold no relevant
document, scores 0 on every metric and still counts in the mean (trec_eval -c, ir-measures, ranx
with make_comparable). The mean is the arithmetic mean over those queries.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

METRIC_NAMES = ("recall", "ndcg", "map", "mrr", "hit")
_METRIC_RE = re.compile(r"^\s*([a-z]+)\s*@\s*(\d+)\s*$")


@dataclass(frozen=True)
class MetricSpec:
    """A metric and its cutoff, e.g. `MetricSpec("ndcg", 10)` for "ndcg@10"."""

    name: str
    k: int

    def __str__(self) -> str:
        return f"{self.name}@{self.k}"


def parse_metric(text: str) -> MetricSpec:
    """Parse "ndcg@10" (case-insensitive) into a `MetricSpec`; ValueError if it is not one."""
    match = _METRIC_RE.match(text.lower())
    if not match or match.group(1) not in METRIC_NAMES:
        names = ", ".join(METRIC_NAMES)
        raise ValueError(f"unknown metric {text!r}: expected NAME@K with NAME one of {names}")
    k = int(match.group(2))
    if k < 1:
        raise ValueError(f"metric {text!r}: the cutoff k must be at least 1")
    return MetricSpec(match.group(1), k)


def _score_query(ranked_gains: Sequence[float], judged_gains: Sequence[float], spec: MetricSpec) -> float:
    """One metric for one query: `ranked_gains` are the gains of the top documents in rank order
    (0 for unjudged or non-relevant), `judged_gains` the positive gains of all relevant documents."""
    num_relevant = len(judged_gains)
    if num_relevant == 0:
        return 0.0
    top = ranked_gains[: spec.k]
    if spec.name == "recall":
        return sum(1 for gain in top if gain > 0) / num_relevant
    if spec.name == "hit":
        return 1.0 if any(gain > 0 for gain in top) else 0.0
    if spec.name == "mrr":
        return next((1.0 / rank for rank, gain in enumerate(top, start=1) if gain > 0), 0.0)
    if spec.name == "map":
        hits, total = 0, 0.0
        for rank, gain in enumerate(top, start=1):
            if gain > 0:
                hits += 1
                total += hits / rank
        return total / num_relevant
    if spec.name == "ndcg":
        dcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(top, start=1) if gain > 0)
        ideal = sorted(judged_gains, reverse=True)[: spec.k]
        idcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(ideal, start=1))
        return dcg / idcg
    raise AssertionError(f"unhandled metric {spec.name}")  # parse_metric admits only METRIC_NAMES


def per_query(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
              metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """metric name -> query_id -> value, for every query of `qrels` (see the module docstring).

    Metric names are returned in canonical form ("NDCG@10" -> "ndcg@10").
    """
    specs = [parse_metric(name) for name in metrics]
    if not specs:
        raise ValueError("no metrics requested")
    depth = max(spec.k for spec in specs)
    results: dict[str, dict[str, float]] = {str(spec): {} for spec in specs}
    for query_id, judged in qrels.items():
        scores = run.get(query_id, {})
        # Top `depth` by (score, doc_id) descending: trec_eval's order, ties by doc_id descending.
        top = heapq.nlargest(depth, scores.items(), key=lambda item: (item[1], item[0]))
        ranked_gains = [max(judged.get(doc_id, 0), 0) for doc_id, _ in top]
        judged_gains = [gain for gain in judged.values() if gain > 0]
        for spec in specs:
            results[str(spec)][query_id] = _score_query(ranked_gains, judged_gains, spec)
    return results


def evaluate(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
             metrics: Sequence[str]) -> dict[str, float]:
    """metric name -> mean over the queries of `qrels` (0.0 for each metric if qrels is empty)."""
    values = per_query(run, qrels, metrics)
    return {name: (math.fsum(by_query.values()) / len(by_query) if by_query else 0.0)
            for name, by_query in values.items()}


# --- AMI ---------------------------------------------------------------------------------


def _entropy(counts: np.ndarray) -> float:
    total = counts.sum()
    probabilities = counts / total
    return float(-(probabilities * (np.log(counts) - math.log(total))).sum())


def _expected_mutual_information(row_sums: np.ndarray, col_sums: np.ndarray, n: int) -> float:
    """E[MI] of two random labelings with these cluster sizes (hypergeometric model, Vinh et al. 2010).

    The sum runs over rows, with the columns and the possible cell counts n_ij as one array per
    chunk of columns, so it costs sum_ij min(a_i, b_j) terms like scikit-learn's loop.
    """
    if row_sums.size == 1 or col_sums.size == 1:
        return 0.0
    a = row_sums.astype(np.float64)
    b = col_sums.astype(np.float64)
    gln_n = gammaln(n + 1)
    emi = 0.0
    for a_i in a:
        const_i = gammaln(a_i + 1) + gammaln(n - a_i + 1) - gln_n
        # Chunk the columns so one (columns x n_ij) grid stays near 4M cells.
        chunk = max(1, int(4_000_000 // max(1.0, min(a_i, b.max()))))
        for start in range(0, b.size, chunk):
            b_j = b[start:start + chunk][:, None]  # (C, 1)
            top = int(min(a_i, b_j.max()))
            nij = np.arange(1, top + 1, dtype=np.float64)[None, :]  # (1, T)
            lower = np.maximum(1.0, a_i + b_j - n)
            upper = np.minimum(a_i, b_j)
            valid = (nij >= lower) & (nij <= upper)
            # log P(n_ij) of the hypergeometric distribution, only where valid (elsewhere the
            # gammaln arguments can be <= 0).
            safe = np.where(valid, nij, 1.0)
            log_p = (const_i + gammaln(b_j + 1) + gammaln(n - b_j + 1)
                     - gammaln(safe + 1) - gammaln(a_i - safe + 1) - gammaln(b_j - safe + 1)
                     - gammaln(n - a_i - b_j + safe + 1))
            term = (safe / n) * (np.log(n * safe) - np.log(a_i) - np.log(b_j)) * np.exp(log_p)
            emi += float(np.where(valid, term, 0.0).sum())
    return emi


def adjusted_mutual_info(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """Adjusted mutual information of two labelings of the same items, arithmetic normalisation.

    Equals `sklearn.metrics.adjusted_mutual_info_score(labels_a, labels_b)` (its default
    `average_method="arithmetic"`), special cases included: 1.0 when both labelings have one
    cluster, 0.0 when exactly one of them has; about 0.0 for independent labelings. Labels may
    be any hashable values.
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"labelings differ in length: {len(labels_a)} and {len(labels_b)}")
    n = len(labels_a)
    pairs = Counter(zip(labels_a, labels_b, strict=True))
    counts_a = Counter(labels_a)
    counts_b = Counter(labels_b)
    if (len(counts_a) == len(counts_b) == 1) or n == 0:
        return 1.0
    if len(counts_a) == 1 or len(counts_b) == 1:
        return 0.0
    row = {label: i for i, label in enumerate(counts_a)}
    col = {label: j for j, label in enumerate(counts_b)}
    row_sums = np.array(list(counts_a.values()), dtype=np.float64)
    col_sums = np.array(list(counts_b.values()), dtype=np.float64)
    cells = np.array(list(pairs.values()), dtype=np.float64)
    cell_rows = np.array([row[a] for a, _ in pairs])
    cell_cols = np.array([col[b] for _, b in pairs])
    # MI = sum p_ij log(p_ij / (p_i p_j)), in nats like scikit-learn.
    mi_terms = (cells / n) * (np.log(cells) + math.log(n) - np.log(row_sums[cell_rows])
                              - np.log(col_sums[cell_cols]))
    mi = max(float(np.where(np.abs(mi_terms) < np.finfo(np.float64).eps, 0.0, mi_terms).sum()), 0.0)
    emi = _expected_mutual_information(row_sums, col_sums, n)
    normalizer = (_entropy(row_sums) + _entropy(col_sums)) / 2
    denominator = normalizer - emi
    # The guards of scikit-learn: keep the sign and stay at least eps away from 0, so a perfect
    # match whose EMI equals its MI (all singletons, say) gives eps / eps = 1, not 0 / 0.
    eps = float(np.finfo(np.float64).eps)
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    numerator = mi - emi
    numerator = min(numerator, -eps) if numerator < 0 else max(numerator, eps)
    return numerator / denominator


def id_level_ami(semantic_ids: Sequence[Sequence[int]], labels: Sequence[Hashable], level: int = 0) -> float:
    """AMI between the codes of one ID level (prefix up to and including `level`) and labels.

    Level 0 groups documents by their first code; level 1 by their first two codes, and so on,
    so the score measures the clusters that the ID's prefix at that depth defines.
    """
    if len(semantic_ids) != len(labels):
        raise ValueError(f"{len(semantic_ids)} semantic IDs but {len(labels)} labels")
    if any(len(semantic_id) <= level for semantic_id in semantic_ids):
        raise ValueError(f"level {level} is beyond the length of some semantic IDs")
    prefixes = [tuple(semantic_id[: level + 1]) for semantic_id in semantic_ids]
    return adjusted_mutual_info(prefixes, labels)
