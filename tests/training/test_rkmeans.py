"""RK-means: residual levels, code numbering, greedy reproduction of the codes, determinism, presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from lmindexer.cli import main
from tests.training.test_learn_ids import beauty_corpus
from training.config import load_config, preset_path
from training.data.corpus import read_corpus_jsonl
from training.errors import ConfigError
from training.indexing.embedding_cache import document_embeddings
from training.indexing.rkmeans import (
    RKMeansConfig,
    nearest_centroid,
    number_by_size,
    residual_kmeans,
    rkmeans_codes,
)


def structured(n: int = 1200, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two scales of structure: 12 far-apart centres, each with 6 nearby sub-centres, plus noise.
    Returns the points (n, d) and each point's centre (n,)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d)) * 10
    offsets = rng.standard_normal((12, 6, d)) * 2
    top, sub = rng.integers(0, 12, n), rng.integers(0, 6, n)
    return (centres[top] + offsets[top, sub] + 0.1 * rng.standard_normal((n, d))).astype(np.float32), top


def points(n: int = 1200, d: int = 16, seed: int = 0) -> np.ndarray:
    return structured(n, d, seed)[0]


def config(**changes) -> RKMeansConfig:
    return RKMeansConfig(**{"num_levels": 3, "codebook_size": 12, "kmeans_n_init": 2, "kmeans_max_iter": 100,
                            "seed": 5, **changes})


def test_each_level_clusters_the_residuals_the_levels_above_leave():
    x, centre = structured()
    codes, codebooks, figures = residual_kmeans(x, config())
    assert codes.shape == (1200, 3) and [c.shape for c in codebooks] == [(12, 16)] * 3
    residual = x.astype(np.float64)
    for level, centroids in enumerate(codebooks):
        # the level's codes are the nearest of its centroids to the residual entering it ...
        assert np.array_equal(codes[:, level], nearest_centroid(residual, centroids))
        # ... and its centroids are the means of their clusters there (a converged k-means)
        for code in np.unique(codes[:, level]):
            np.testing.assert_allclose(centroids[code], residual[codes[:, level] == code].mean(0), atol=1e-3)
        residual = residual - centroids[codes[:, level]]
    # every level removes part of what is left (the residual shrinks level after level)
    norms = [f["mean_residual_norm_after"] for f in figures]
    assert norms[0] > norms[1] > norms[2]
    # the first level finds the 12 far-apart centres exactly: one code per centre
    assert len(set(zip(codes[:, 0].tolist(), centre.tolist(), strict=True))) == 12


def test_codes_are_numbered_by_decreasing_size_then_first_row():
    labels = np.array([2, 0, 2, 1, 1, 3, 2])
    centroids = np.arange(8.0).reshape(4, 2)
    new, moved = number_by_size(labels, centroids)
    # sizes: 2 -> 3 docs, 1 -> 2 docs, 0 and 3 -> 1 doc each (0 holds row 1, 3 holds row 5)
    assert new.tolist() == [0, 2, 0, 1, 1, 3, 0]
    assert moved.tolist() == [[4, 5], [2, 3], [0, 1], [6, 7]]
    codes, _, _ = residual_kmeans(points(), config())
    for level in range(3):
        sizes = np.bincount(codes[:, level])
        assert list(sizes) == sorted(sizes, reverse=True)


def test_exact_ties_go_to_the_lower_code():
    centroids = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0]])
    assert nearest_centroid(np.array([[0.0, 0.0], [0.9, 0.1], [-0.2, 0.0]]), centroids).tolist() == [0, 0, 1]


def test_greedy_codes_of_the_saved_codebooks_reproduce_the_training_codes():
    x = points()
    codes, codebooks, _ = residual_kmeans(x, config())
    assert np.array_equal(rkmeans_codes(x, codebooks), codes)
    # a new document near a training one gets that document's codes
    assert np.array_equal(rkmeans_codes(x[:5] + 1e-4, codebooks), codes[:5])


def test_deterministic_for_a_seed_and_seed_matters():
    x = points()
    a, _, _ = residual_kmeans(x, config())
    b, _, _ = residual_kmeans(x, config())
    c, _, _ = residual_kmeans(x, config(seed=6, kmeans_n_init=1))
    assert np.array_equal(a, b)
    assert not np.array_equal(a[:, 1:], c[:, 1:])


def test_more_codes_than_distinct_points_shrinks_the_level():
    x = np.repeat(points(n=5), 4, axis=0)  # 5 distinct points, 20 rows
    codes, codebooks, _ = residual_kmeans(x, config(codebook_size=8))
    assert len(codebooks[0]) == 5 and codes[:, 0].max() < 5
    # after the first level every residual is zero: one code at the deeper levels
    assert len(codebooks[1]) == 1 and not codes[:, 1:].any()


def test_settings_and_presets():
    with pytest.raises(ConfigError):
        RKMeansConfig(codebook_size=1)
    with pytest.raises(ConfigError):
        RKMeansConfig(threads=0)
    paper = load_config(RKMeansConfig, preset_path("rkmeans", "paper"))
    assert (paper.num_levels, paper.codebook_size, paper.threads) == (3, 256, 1)
    quick = load_config(RKMeansConfig, preset_path("rkmeans", "quick"))
    assert quick.num_levels == 3 and quick.codebook_size < 256
    with pytest.raises(ConfigError):
        load_config(RKMeansConfig, preset_path("rkmeans", "quick"), ["codebook_sze=3"])


@pytest.mark.slow
def test_learn_ids_rkmeans_end_to_end(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LMINDEXER_CACHE_DIR", str(tmp_path / "cache"))
    corpus = beauty_corpus(tmp_path / "beauty200.jsonl")
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["learn-ids", "--corpus", str(corpus), "--method", "rkmeans", "--out", str(out)]) == 0
        outs.append(out)
    run = json.loads((outs[0] / "run.json").read_text())
    metrics = json.loads((outs[0] / "metrics.json").read_text())
    assert run["method"] == "rkmeans" and run["num_levels"] == 3 and run["codebook_sizes"] == [32] * 3
    assert metrics["levels"][0]["ami"] > 0.2  # real category structure at the first level
    tensors = load_file(str(outs[0] / run["files"]["checkpoint"]))
    assert sorted(tensors) == ["codebook/0", "codebook/1", "codebook/2"]
    ids = np.array([json.loads(line)["semantic_id"] for line in (outs[0] / "ids.jsonl").read_text().splitlines()])
    embeddings = document_embeddings([d.text for d in read_corpus_jsonl(corpus)], show_progress=False)
    assert np.array_equal(rkmeans_codes(embeddings, [tensors[f"codebook/{i}"] for i in range(3)]), ids[:, :3])
    assert (outs[1] / "ids.jsonl").read_bytes() == (outs[0] / "ids.jsonl").read_bytes()
