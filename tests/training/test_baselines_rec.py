"""Recommendation baselines: metrics, most-popular against a hand computation, SASRec mechanics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from training.baselines.popularity import (
    PopularitySettings,
    popularity_counts,
    popularity_order,
    popularity_ranks,
    run_popularity,
)
from training.baselines.recommendation import RecData, rank_metrics, run_recommendation_baseline
from training.baselines.sasrec import (
    SASRec,
    SASRecSettings,
    length_bucketed_batches,
    sasrec_ranks,
    train_sasrec,
    training_arrays,
)
from training.errors import ConfigError

# A hand-made catalogue of 6 items and 4 users (items 1-based; the last two are the targets).
#   u0: 1 2 3 | 4 5      training 1 2 3, valid target 4, test target 5
#   u1: 2 3   | 1 2      training 2 3,   valid target 1, test target 2
#   u2: 3 2 6 | 2 3      training 3 2 6, valid target 2, test target 3
#   u3: 5 3   | 6 1      training 5 3,   valid target 6, test target 1
TOY = [[1, 2, 3, 4, 5], [2, 3, 1, 2], [3, 2, 6, 2, 3], [5, 3, 6, 1]]


def _ndcg(rank: int, k: int) -> float:
    return 1.0 / math.log2(rank + 1) if rank <= k else 0.0


def test_rank_metrics_by_hand():
    ranks = np.array([1, 3, 6, 11])
    got = rank_metrics(ranks, ks=(5, 10))
    assert got["recall@5"] == pytest.approx(2 / 4)
    assert got["recall@10"] == pytest.approx(3 / 4)
    assert got["ndcg@5"] == pytest.approx((1.0 + 0.5) / 4)  # 1/log2(2) + 1/log2(4)
    assert got["ndcg@10"] == pytest.approx((1.0 + 0.5 + 1 / math.log2(7)) / 4)
    with pytest.raises(ValueError):
        rank_metrics(np.array([0, 1]))


def test_popularity_on_a_hand_made_dataset():
    data = RecData.from_sequences(TOY, num_items=6)
    counts = popularity_counts(data.train_sequences, data.num_items)
    # Training interactions only: item 3 x4, item 2 x3, items 1, 5, 6 x1, item 4 x0.
    assert counts.tolist() == [0, 1, 3, 4, 0, 1, 1]
    # Ties by ascending index: 3, 2, 1, 5, 6, 4.
    assert popularity_order(counts).tolist() == [3, 2, 1, 5, 6, 4]
    valid = popularity_ranks(counts, data.valid_histories, data.valid_targets)
    test = popularity_ranks(counts, data.test_histories, data.test_targets)
    assert valid.tolist() == [6, 3, 2, 5]  # targets 4, 1, 2, 6
    assert test.tolist() == [4, 2, 1, 3]  # targets 5, 2, 3, 1
    # Excluding history: u0's test history 1 2 3 4 holds 3, 2, 1 above target 5 -> rank 1;
    # u1's history 2 3 1 minus the target 2 holds 3 above it -> rank 1; u2's history 3 2 6 2
    # minus the target 3: nothing above -> 1; u3's history 5 3 6: 3 above target 1 -> 2.
    excluded = popularity_ranks(counts, data.test_histories, data.test_targets, exclude_history=True)
    assert excluded.tolist() == [1, 1, 1, 2]

    result = run_popularity(data, PopularitySettings(), ks=(1, 3))
    hand_valid = {"recall@1": 0.0, "ndcg@1": 0.0,
                  "recall@3": 2 / 4, "ndcg@3": (_ndcg(3, 3) + _ndcg(2, 3)) / 4}
    hand_test = {"recall@1": 1 / 4, "ndcg@1": 1 / 4,
                 "recall@3": 3 / 4, "ndcg@3": (_ndcg(2, 3) + 1.0 + _ndcg(3, 3)) / 4}
    assert result["metrics"]["valid"] == pytest.approx(hand_valid)
    assert result["metrics"]["test"] == pytest.approx(hand_test)
    assert result["top_items"][0] == {"item": "i3", "train_count": 4}


def test_training_arrays_predict_every_position():
    seqs = [np.array([4, 5, 6, 7]), np.array([9]), np.array([1, 2])]
    inputs, targets = training_arrays(seqs, max_len=3)
    # The single-item user has nothing to predict and is dropped.
    assert inputs.tolist() == [[4, 5, 6], [0, 0, 1]]
    assert targets.tolist() == [[5, 6, 7], [0, 0, 2]]
    inputs, targets = training_arrays(seqs, max_len=2)
    assert inputs.tolist() == [[5, 6], [0, 1]] and targets.tolist() == [[6, 7], [0, 2]]


def test_bucketed_batches_cover_every_row_once():
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    batches = length_bucketed_batches(lengths, 64, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert max(len(b) for b in batches) == 64


def test_sasrec_padding_and_trimming_do_not_change_scores():
    torch.manual_seed(0)
    model = SASRec(20, SASRecSettings(hidden_size=16, num_heads=2, max_len=8, dropout=0.0)).eval()
    short = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        full = model(short)
        trimmed = model(short[:1, -3:])
    assert torch.isfinite(full).all()
    torch.testing.assert_close(full[0, -3:], trimmed[0], atol=1e-5, rtol=1e-5)


def test_sasrec_ranks_against_a_direct_computation():
    torch.manual_seed(0)
    model = SASRec(12, SASRecSettings(hidden_size=8, num_heads=2, max_len=5, dropout=0.0))
    histories = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9]), np.array([10])]
    targets = np.array([4, 1, 10])
    ranks = sasrec_ranks(model, histories, targets, batch_size=2)
    with torch.no_grad():
        for history, target, rank in zip(histories, targets, ranks, strict=True):
            scores = model.item_scores(model(torch.tensor(history[-5:])[None])[:, -1])[0]  # (12,)
            assert rank == 1 + int((scores > scores[target - 1]).sum())
        # Excluding history removes exactly the history items ranked above the target (not the target).
        excluded = sasrec_ranks(model, histories, targets, exclude_history=True)
        for history, target, rank in zip(histories, targets, excluded, strict=True):
            scores = model.item_scores(model(torch.tensor(history[-5:])[None])[:, -1])[0]
            above = {j + 1 for j in range(12) if scores[j] > scores[target - 1]}
            assert rank == 1 + len(above - set(history[-5:].tolist()))


def test_sasrec_short_run_learns(tmp_path):
    """~175 steps on a small hand-made dataset: the loss falls, figures are in [0, 1], and the model
    beats most-popular.

    The sequences follow a fixed transition rule over 30 items (item i is followed by i + 1),
    which a sequence model learns in seconds and popularity cannot. (On real Beauty a few seconds
    of training does not reliably beat popularity, so that comparison is the benchmark's job.)
    """
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(200):
        start, length = int(rng.integers(1, 25)), int(rng.integers(4, 7))
        seqs.append([start + t for t in range(length)])
    data = RecData.from_sequences(seqs, num_items=30)
    settings = SASRecSettings(hidden_size=16, num_heads=1, num_blocks=1, max_len=8, dropout=0.1, lr=5e-3,
                              batch_size=32, max_epochs=25, patience=25, progress=False, seed=3)
    result = train_sasrec(data, settings, out_dir=tmp_path)
    losses = [e["loss"] for e in result["epochs"]]
    assert losses[-1] < 0.5 * losses[0]
    for split in ("valid", "test"):
        assert all(0.0 <= v <= 1.0 for v in result["metrics"][split].values())
    popular = run_popularity(data)["metrics"]["test"]["recall@5"]
    assert result["metrics"]["test"]["recall@5"] > max(0.9, popular)
    checkpoint = torch.load(tmp_path / "sasrec-best.pt", weights_only=False)
    assert checkpoint["epoch"] == result["best_epoch"]


def test_recdata_from_beauty_matches_the_split():
    from training.data.amazon import load_amazon

    data = RecData.from_dataset(load_amazon())
    assert data.num_items == 12_101 and data.num_users == 22_363
    assert data.num_train_interactions == 198_502 - 2 * 22_363
    assert data.item_ids[0] == "B004756YJA"
    assert all(np.array_equal(v, t[:-1]) for v, t in zip(data.valid_histories, data.test_histories, strict=True))
    assert np.array_equal(data.valid_targets, [t[-1] for t in data.test_histories])


def test_run_recommendation_baseline_writes_json(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"asin": f"a{i}", "title": f"t{i}"}) + "\n" for i in range(1, 7)))
    seqs = tmp_path / "seq.txt"
    seqs.write_text("".join(f"u{u} " + " ".join(f"a{i}" for i in s) + "\n" for u, s in enumerate(TOY)))
    report = run_recommendation_baseline("popularity", tmp_path / "out", items_path=str(items),
                                         sequences_path=str(seqs))
    assert json.loads((tmp_path / "out" / "metrics-popularity.json").read_text()) == report
    assert report["metrics"]["test"]["recall@5"] == pytest.approx(1.0)  # ranks 4, 2, 1, 3
    assert report["metrics"]["valid"]["recall@5"] == pytest.approx(3 / 4)  # ranks 6, 3, 2, 5
    assert report["data"]["num_train_interactions"] == 10
    with pytest.raises(ConfigError, match="unknown option"):
        run_recommendation_baseline("popularity", tmp_path / "out", hidden_size=3)
    with pytest.raises(ConfigError, match="unknown recommendation baseline"):
        run_recommendation_baseline("bpr", tmp_path / "out")
