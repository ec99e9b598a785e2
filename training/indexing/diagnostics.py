"""Method-independent diagnostics of learned codes, per level.

For learned level t (0-based) of codes (N, L):

- `perplexity`: exp(H) of the histogram of the level's codes (nats). K when every code is used
  equally, 1 when one code takes every document (posterior collapse). The official code logs the
  same figure (`SID/IDGen/utils.py`).
- `usage`: fraction of the K codes that at least one document uses; `codes_used` the count.
- `prefixes`: number of distinct prefixes c_0..c_t (the number of clusters at this depth).
- `ami`: adjusted mutual information between the prefix c_0..c_t and the labels (at level 0 the
  paper's "AMI of the first ID position"), over the documents that have a label.
- `diff_ratio` (levels >= 1): among documents that share the prefix c_0..c_{t-1} with at least
  one other document, the mean over such groups of (distinct codes at level t) / (group size),
  weighted by group size. 1 means the level separates every sibling, 1/size means it separates
  none. This is the method-independent form of the official `same_prefix_last_diff` figure.

Collisions (on the full learned code): `collision_rate` = fraction of documents whose learned
code is shared with another document; `colliding_groups`; `largest_collision_group` (so the
counter level needs `largest_collision_group` values); `distinct_codes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score


def prefix_groups(codes: np.ndarray, depth: int) -> np.ndarray:
    """(N,) int64 group index of each row's prefix codes[:, :depth] (depth >= 1)."""
    codes = np.asarray(codes, dtype=np.int64)
    if depth <= 0:
        return np.zeros(codes.shape[0], dtype=np.int64)
    _, inverse = np.unique(codes[:, :depth], axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def code_perplexity(level_codes: np.ndarray) -> float:
    """exp(entropy) of the code histogram of one level, (N,) ints."""
    _, counts = np.unique(np.asarray(level_codes), return_counts=True)
    p = counts / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def same_prefix_diff_ratio(codes: np.ndarray, level: int) -> float | None:
    """Distinct level-`level` codes per document among siblings sharing the previous prefix.

    None when no prefix group at depth `level` has two or more documents (or level 0).
    """
    if level < 1:
        return None
    parent = prefix_groups(codes, level)
    child = prefix_groups(codes, level + 1)
    sizes = np.bincount(parent)
    # Distinct children per parent: count unique (parent, child) pairs per parent.
    pairs = np.unique(np.stack([parent, child], axis=1), axis=0)
    distinct = np.bincount(pairs[:, 0], minlength=len(sizes))
    shared = sizes >= 2
    if not shared.any():
        return None
    # Size-weighted mean of distinct/size = sum(distinct) / sum(size) over the shared groups.
    return float(distinct[shared].sum() / sizes[shared].sum())


def collision_statistics(codes: np.ndarray) -> dict[str, Any]:
    """Collisions of the full learned codes (N, L): rate, group count, largest group, size histogram."""
    groups = prefix_groups(codes, codes.shape[1])
    sizes = np.bincount(groups)
    colliding = sizes[sizes >= 2]
    n = max(codes.shape[0], 1)
    size_values, size_counts = np.unique(sizes, return_counts=True)
    return {
        "distinct_codes": len(sizes),
        "collision_rate": float(colliding.sum() / n),
        "colliding_groups": len(colliding),
        "largest_collision_group": int(sizes.max()) if len(sizes) else 0,
        "group_size_histogram": {str(int(s)): int(c) for s, c in zip(size_values, size_counts, strict=True)},
    }


def adjusted_mutual_information(clusters: np.ndarray, labels: Sequence[str | None]) -> float | None:
    """AMI between cluster ids and labels over the rows that have a label; None without labels."""
    keep = np.array([label is not None for label in labels], dtype=bool)
    if keep.sum() < 2:
        return None
    kept_labels = [label for label in labels if label is not None]
    return float(adjusted_mutual_info_score(kept_labels, np.asarray(clusters)[keep]))


def level_diagnostics(
    codes: np.ndarray, codebook_sizes: Sequence[int], labels: Sequence[str | None] | None = None
) -> list[dict[str, Any]]:
    """One dict of figures per learned level (see the module docstring)."""
    codes = np.asarray(codes, dtype=np.int64)
    levels = []
    for level, size in enumerate(codebook_sizes):
        column = codes[:, level]
        used = len(np.unique(column))
        groups = prefix_groups(codes, level + 1)
        figures: dict[str, Any] = {
            "level": level,
            "codebook_size": int(size),
            "codes_used": used,
            "usage": used / int(size) if size else 0.0,
            "perplexity": code_perplexity(column),
            "prefixes": int(groups.max()) + 1 if len(groups) else 0,
            "largest_prefix_group": int(np.bincount(groups).max()) if len(groups) else 0,
            "diff_ratio": same_prefix_diff_ratio(codes, level),
        }
        if labels is not None:
            figures["ami"] = adjusted_mutual_information(groups, labels)
        levels.append(figures)
    return levels


def code_diagnostics(
    codes: np.ndarray, codebook_sizes: Sequence[int], labels: Sequence[str | None] | None = None
) -> dict[str, Any]:
    """All generic figures of a set of learned codes: per level, collisions, label count."""
    codes = np.asarray(codes, dtype=np.int64)
    result: dict[str, Any] = {
        "num_documents": int(codes.shape[0]),
        "num_levels": int(codes.shape[1]),
        "codebook_sizes": [int(k) for k in codebook_sizes],
        "levels": level_diagnostics(codes, codebook_sizes, labels),
        "collisions": collision_statistics(codes),
    }
    if labels is not None:
        result["labelled_documents"] = int(sum(label is not None for label in labels))
        result["distinct_labels"] = len({label for label in labels if label is not None})
    return result
