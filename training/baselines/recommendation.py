"""Recommendation baselines on Amazon P5 data: shared data arrays, metrics and the entry point.

Protocol (P5 / TIGER / LMIndexer, see `training/data/amazon.py`): leave-one-out per user; the
validation target is the second-to-last item (history: everything before it), the test target
the last item (history: everything before it, the validation item included). Every model ranks
the whole catalogue for every user. With a single target per user,

    Recall@k = 1 if rank <= k else 0
    NDCG@k   = 1 / log2(rank + 1) if rank <= k else 0

averaged over users (rank is 1-based). Items already in the user's history are NOT removed from
the ranking by default, as in the P5 / TIGER protocol (`exclude_history` turns it on; on Beauty
no user buys the same item twice, so exclusion can only raise the figures).

`run_recommendation_baseline("popularity" | "sasrec", out_dir, **options)` is what
`lmindexer baseline --dataset beauty` calls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.config import build_config, config_to_dict
from training.data.amazon import AmazonDataset, AmazonSettings, load_amazon
from training.errors import ConfigError

logger = logging.getLogger(__name__)

METHODS = ("popularity", "sasrec")
DEFAULT_KS = (5, 10)


@dataclass(frozen=True)
class RecData:
    """A dataset as integer arrays. Item indices are 1..num_items in items-file order; 0 is padding.

    Sequences are not truncated here: each model keeps as much history as it is configured for.
    """

    item_ids: tuple[str, ...]  # index - 1 -> asin
    user_ids: tuple[str, ...]
    train_sequences: list[np.ndarray]  # per user, the training interactions (all items but the last two)
    valid_histories: list[np.ndarray]  # per user, the items before the validation target
    valid_targets: np.ndarray  # (num_users,)
    test_histories: list[np.ndarray]  # per user, the items before the test target
    test_targets: np.ndarray  # (num_users,)

    @property
    def num_items(self) -> int:
        """Catalogue size (padding index 0 not counted)."""
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        """Users, one validation and one test example each."""
        return len(self.user_ids)

    @classmethod
    def from_dataset(cls, dataset: AmazonDataset) -> RecData:
        """Leave-one-out arrays of `dataset` (the split rule of `training.data.amazon.leave_one_out`)."""
        index = dataset.item_index()
        train, valid_h, test_h, valid_t, test_t = [], [], [], [], []
        for user in dataset.sequences:
            seq = np.fromiter((index[a] for a in user.items), dtype=np.int64, count=len(user.items))
            train.append(seq[:-2])
            valid_h.append(seq[:-2])
            valid_t.append(seq[-2])
            test_h.append(seq[:-1])
            test_t.append(seq[-1])
        return cls(
            item_ids=tuple(dataset.items),
            user_ids=tuple(s.user_id for s in dataset.sequences),
            train_sequences=train,
            valid_histories=valid_h,
            valid_targets=np.asarray(valid_t, dtype=np.int64),
            test_histories=test_h,
            test_targets=np.asarray(test_t, dtype=np.int64),
        )

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], num_items: int) -> RecData:
        """Arrays from raw sequences of 1-based item indices (tests and toy data); users are u0, u1, ..."""
        for user, seq in enumerate(sequences):
            if len(seq) < 3 or min(seq) < 1 or max(seq) > num_items:
                raise ValueError(f"sequence {user} needs >= 3 items in 1..{num_items}, got {list(seq)}")
        arrays = [np.asarray(s, dtype=np.int64) for s in sequences]
        return cls(
            item_ids=tuple(f"i{i}" for i in range(1, num_items + 1)),
            user_ids=tuple(f"u{u}" for u in range(len(arrays))),
            train_sequences=[s[:-2] for s in arrays],
            valid_histories=[s[:-2] for s in arrays],
            valid_targets=np.asarray([s[-2] for s in arrays], dtype=np.int64),
            test_histories=[s[:-1] for s in arrays],
            test_targets=np.asarray([s[-1] for s in arrays], dtype=np.int64),
        )

    @property
    def num_train_interactions(self) -> int:
        """Interactions in the training part of all sequences."""
        return int(sum(len(s) for s in self.train_sequences))


def rank_metrics(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@k and NDCG@k averaged over users, from each user's 1-based rank of its single target."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks to score")
    if np.any(ranks < 1):
        raise ValueError("ranks are 1-based")
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    return out


def machine_description() -> dict[str, Any]:
    """Platform, CPU count, load and library versions, for benchmark and metrics JSON."""
    # torch costs 3-6 s to import (measured); the popularity baseline, which imports this module, needs none
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        # Other jobs share these machines: the load average says how much CPU this run really had.
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
    }


def _split_options(options: dict[str, Any], method_cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    # Only the file locations of AmazonSettings apply: the baselines build their own histories.
    data_keys = {"items_path", "sequences_path"}
    method_keys = {f.name for f in dataclasses.fields(method_cls)}
    unknown = sorted(set(options) - data_keys - method_keys)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(data_keys | method_keys))}"
        )
    data = {k: v for k, v in options.items() if k in data_keys}
    method = {k: v for k, v in options.items() if k in method_keys}
    return data, method


def run_recommendation_baseline(method: str, out_dir: Path, **options: Any) -> dict[str, Any]:
    """Train (if needed) and evaluate a recommendation baseline; write `out_dir/metrics-<method>.json`.

    `method` is "popularity" or "sasrec". `options` are `items_path` / `sequences_path` (the data
    files, default: vendored Beauty) and settings of the method's settings class
    (`PopularitySettings` / `SASRecSettings`), by name; an unknown name raises ConfigError.
    Returns the JSON object written: the figures under `metrics` (`valid` / `test` ->
    `recall@5`, `ndcg@5`, `recall@10`, `ndcg@10`), the settings, the data counts, timings and
    the machine.
    """
    # popularity and sasrec import this module (RecData, rank_metrics): at the top it would be a cycle
    from training.baselines.popularity import PopularitySettings, run_popularity
    from training.baselines.sasrec import SASRecSettings, train_sasrec

    if method not in METHODS:
        raise ConfigError(f"unknown recommendation baseline {method!r}; known: {', '.join(METHODS)}")
    method_cls = PopularitySettings if method == "popularity" else SASRecSettings
    data_options, method_options = _split_options(dict(options), method_cls)
    data_settings = build_config(AmazonSettings, data_options, source="data options")
    settings = build_config(method_cls, method_options, source=f"{method} options")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    dataset = load_amazon(data_settings)
    data = RecData.from_dataset(dataset)
    if method == "popularity":
        result = run_popularity(data, settings)  # type: ignore[arg-type]
    else:
        result = train_sasrec(data, settings, out_dir=out_dir)  # type: ignore[arg-type]
    report: dict[str, Any] = {
        "dataset": data_settings.sequences_path.parent.name,
        "method": method,
        "protocol": "leave-one-out; rank the whole catalogue; history items "
                    + ("excluded" if settings.exclude_history else "not excluded"),
        "metrics": result.pop("metrics"),
        "settings": config_to_dict(settings),
        "data": {
            "items_path": str(data_settings.items_path),
            "sequences_path": str(data_settings.sequences_path),
            "num_items": data.num_items,
            "num_users": data.num_users,
            "num_interactions": dataset.num_interactions,
            "num_train_interactions": data.num_train_interactions,
        },
        **result,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "machine": {**machine_description(), "load_average_at_start": load_at_start},
    }
    path = out_dir / f"metrics-{method}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for split in ("valid", "test"):
        figures = ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"][split].items())
        logger.info("%s %s: %s", method, split, figures)
    logger.info("wrote %s", path)
    return report
