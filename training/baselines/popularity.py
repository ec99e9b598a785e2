"""Most-popular recommendation baseline.

Every user gets the same ranking: items by their number of training interactions (all items of
each user's sequence but the last two; validation and test targets are never counted, for the
test ranking either), most popular first. Ties are broken by item index (items-file order, P5 id
order on Beauty), so the ranking, and the figures, are deterministic.

History items are not removed from the ranking by default (the P5 / TIGER protocol ranks the
whole catalogue); `exclude_history=True` removes, per user, the items already in the history
(the target itself is never removed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.baselines.recommendation import DEFAULT_KS, RecData, rank_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PopularitySettings:
    """Settings of the most-popular baseline."""

    exclude_history: bool = field(
        default=False,
        metadata={"help": "Remove the user's history items from its ranking (P5/TIGER protocol: false)."},
    )


def popularity_counts(train_sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """Training interactions per item: an array (num_items + 1,), index 0 (padding) is 0."""
    counts = np.zeros(num_items + 1, dtype=np.int64)
    for seq in train_sequences:
        np.add.at(counts, seq, 1)
    counts[0] = 0
    return counts


def popularity_order(counts: np.ndarray) -> np.ndarray:
    """Item indices 1..N, most popular first, ties by ascending index: shape (N,)."""
    items = np.arange(1, counts.shape[0])
    # lexsort sorts by the last key first: descending count, then ascending index.
    return items[np.lexsort((items, -counts[1:]))]


def popularity_ranks(
    counts: np.ndarray,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    exclude_history: bool = False,
) -> np.ndarray:
    """1-based rank of each user's target in the popularity ranking: shape (num_users,)."""
    order = popularity_order(counts)
    position = np.empty(counts.shape[0], dtype=np.int64)  # item index -> 0-based place in `order`
    position[order] = np.arange(order.shape[0])
    position[0] = -1
    ranks = position[targets] + 1
    if exclude_history:
        for u, (history, target) in enumerate(zip(histories, targets, strict=True)):
            seen = np.unique(history[history != target])
            # Removing a history item ranked above the target moves the target up by one place.
            ranks[u] -= int(np.sum(position[seen] < position[target]))
    return ranks


def run_popularity(
    data: RecData, settings: PopularitySettings | None = None, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, Any]:
    """Count popularity on the training interactions and score validation and test."""
    settings = settings or PopularitySettings()
    started = time.perf_counter()
    counts = popularity_counts(data.train_sequences, data.num_items)
    fit_s = time.perf_counter() - started
    metrics = {
        "valid": rank_metrics(
            popularity_ranks(counts, data.valid_histories, data.valid_targets, settings.exclude_history), ks
        ),
        "test": rank_metrics(
            popularity_ranks(counts, data.test_histories, data.test_targets, settings.exclude_history), ks
        ),
    }
    top = popularity_order(counts)[:10]
    return {
        "metrics": metrics,
        "training_time_s": round(fit_s, 4),
        "top_items": [{"item": data.item_ids[i - 1], "train_count": int(counts[i])} for i in top],
    }
