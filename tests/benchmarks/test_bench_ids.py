"""bench_ids' summary: LMIndexer's seeds make one row (mean and min AMI, worst collisions and agreement),
RK-means joins the baselines, and the issue-15 checks read the right figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_ids", ROOT / "benchmarks" / "bench_ids.py")
bench_ids = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_ids)


def run(method: str, group: str, ami: float, rate: float, largest: int, distinct: int, seed: int = 42,
        agreement: float | None = None, levels: int = 3) -> dict:
    return {"method": method, "group": group, "first_level_size": 256, "ami_first_level": ami,
            "codebook_sizes": [256] * levels, "collisions": {"collision_rate": rate, "largest_collision_group": largest,
                                                             "distinct_codes": distinct},
            "final_network_agreement": agreement, "wall_seconds": 10.0 * seed, "config": {"seed": seed}}


def test_lmindexer_seeds_make_one_row_and_the_checks_use_the_minimum():
    runs = {
        "rqvae": run("rqvae", "equal_256+default", 0.53, 0.11, 8, 11363),
        "rkmeans": run("rkmeans", "equal_256+default", 0.51, 0.23, 8, 10545),
        "hc_first256": run("hc", "equal_256", 0.51, 1.0, 191, 256, levels=1),
        "lmindexer_k256_s42": run("lmindexer", "equal_256", 0.64, 0.05, 4, 11900, 42, 0.995),
        "lmindexer_k256_s43": run("lmindexer", "equal_256", 0.60, 0.09, 6, 11700, 43, 1.0),
        "lmindexer_k256_s44": run("lmindexer", "equal_256", 0.62, 0.07, 12, 11800, 44, 0.999),
    }
    summary = bench_ids.summarise(runs)
    row = summary["equal_256"]["lmindexer"]
    assert row["runs"] == ["lmindexer_k256_s42", "lmindexer_k256_s43", "lmindexer_k256_s44"]
    assert row["seeds"] == [42, 43, 44]
    assert row["ami_first_level"] == pytest.approx(0.62) and row["ami_first_level_min"] == 0.60
    assert (row["collision_rate"], row["largest_collision_group"], row["distinct_full_prefixes"]) == (0.09, 12, 11700)
    assert row["final_network_agreement"] == 0.995 and row["wall_seconds"] == 440.0
    assert set(summary["equal_256"]) == {"rqvae", "rkmeans", "hc", "lmindexer"}
    assert set(summary["default"]) == {"rqvae", "rkmeans"}
    assert summary["lmindexer_over_best_baseline_256"] == pytest.approx(0.60 / 0.53)
    checks = summary["acceptance"]
    assert checks["seeds"] == 3
    assert checks["ami_min_over_best_baseline_at_least_1.15"] is False  # 1.132: the minimum decides, not the mean
    assert summary["lmindexer_mean_over_best_baseline_256"] > 1.15
    assert checks["collision_rate_at_most_rqvae_and_rkmeans"] is True  # 0.09 <= 0.11 (HC's one level is no peer)
    assert checks["largest_collision_group_at_most_10"] is False  # seed 44's group of 12
    assert checks["final_network_agreement_at_least_0.99"] is True


def test_lmindexer_runs_one_per_seed_and_size():
    plan = bench_ids.lmindexer_runs("cpu", ["num_threads=2"], [1, 2])
    assert sorted(plan) == ["lmindexer_k256_s1", "lmindexer_k256_s2", "lmindexer_s1", "lmindexer_s2"]
    assert plan["lmindexer_k256_s2"] == ("lmindexer", "cpu", ["num_threads=2", "codebook_size=256", "seed=2"],
                                         "equal_256")
