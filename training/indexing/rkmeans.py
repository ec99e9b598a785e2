"""RK-means: residual k-means on the encoder's document embeddings (no training).

The semantic-ID tokenizer GRID (Snap Research, "Generative Recommendation with Semantic IDs",
arXiv 2507.22224) calls RQ-KMeans, also used by cornac's TIGER port: L levels of K centroids
fitted one after the other on the residuals the levels above leave,

    r_0 = x,   c_l = argmin_j ||r_l - C^l_j||^2,   r_{l+1} = r_l - C^l_{c_l}

where x (d) is the document's L2-normalised encoder embedding (EmbeddingSettings, shared with
rq-VAE and HC and read from the embedding cache) and C^l (K x d) the k-means centroids of the
r_l of all documents. Unlike rq-VAE nothing is learned by gradient descent, so it is cheap (a few
k-means fits) and has no latent space of its own: the codes live in the embedding space itself.

Determinism. Same data, seed and `threads` on one machine give the same codes. Two rules make the
codes independent of accidents of the k-means implementation:

- every assignment, in training and in `rkmeans_codes` (a new document), is recomputed here in
  float64 as the nearest centroid with exact ties broken towards the lower code;
- each level's centroids are numbered by decreasing cluster size, ties by the lowest document row
  in the cluster, so code numbers do not depend on k-means' internal label order.

The one source of float nondeterminism left is scikit-learn's Lloyd iterations with more than one
OpenMP thread (per-thread partial centroid sums are reduced in the order the threads finish), hence
`threads` = 1 by default; BLAS results can also differ between thread counts and machines.

Checkpoint: `model.safetensors` with one `codebook/<level>` (K_l x d, float64) per level, and
`config.json` (method, settings, embedding size, codebook sizes).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from training.config import config_to_dict
from training.data.corpus import Document
from training.errors import ConfigError
from training.indexing.embedding_cache import EmbeddingSettings
from training.indexing.learning import LearnedCodes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RKMeansConfig(EmbeddingSettings):
    """Settings of the RK-means indexer (presets: training/configs/rkmeans-*.toml)."""

    num_levels: int = field(default=3, metadata={"help": "Residual levels L (learned ID levels)."})
    codebook_size: int = field(default=256, metadata={"help": "Centroids per level K."})
    kmeans_n_init: int = field(default=3, metadata={"help": "k-means restarts per level (best inertia kept)."})
    kmeans_max_iter: int = field(default=300, metadata={"help": "k-means (Lloyd) iterations per restart."})
    kmeans_tol: float = field(default=1e-4, metadata={
        "help": "k-means convergence tolerance (scikit-learn's, relative to the data variance)."})
    seed: int = field(default=42, metadata={"help": "Seed of the k-means initialisations (level l uses seed + l)."})
    threads: int = field(default=1, metadata={
        "help": "CPU threads for k-means and BLAS; 1 makes runs bit-for-bit repeatable (see the module docstring)."})

    def __post_init__(self) -> None:
        if not 1 <= self.num_levels <= 8 or self.codebook_size < 2:
            raise ConfigError("num_levels must be in 1..8 and codebook_size >= 2")
        if self.kmeans_n_init < 1 or self.kmeans_max_iter < 1 or self.threads < 1:
            raise ConfigError("kmeans_n_init, kmeans_max_iter and threads must be >= 1")
        if self.kmeans_tol < 0:
            raise ConfigError("kmeans_tol must be >= 0")


def nearest_centroid(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N,) int64 index of the nearest centroid (squared L2, float64); exact ties go to the lower index.

    points (N, d), centroids (K, d).
    """
    points = np.asarray(points, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    distances = (
        (points**2).sum(1, keepdims=True) - 2.0 * points @ centroids.T + (centroids**2).sum(1)[None, :]
    )  # (N, K)
    return distances.argmin(axis=1).astype(np.int64)  # argmin returns the first of equal minima


def number_by_size(labels: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber clusters by decreasing size, ties by the lowest row they contain; empty ones last.

    labels (N,) in [0, K), centroids (K, d) -> (labels (N,), centroids (K, d)) renumbered.
    """
    k = len(centroids)
    sizes = np.bincount(labels, minlength=k)
    first_row = np.full(k, len(labels), dtype=np.int64)
    np.minimum.at(first_row, labels, np.arange(len(labels)))
    order = np.lexsort((np.arange(k), first_row, -sizes))  # primary key last: size, then first row
    new_number = np.empty(k, dtype=np.int64)
    new_number[order] = np.arange(k)
    return new_number[labels], centroids[order]


def residual_kmeans(embeddings: np.ndarray, config: RKMeansConfig) -> tuple[np.ndarray, list[np.ndarray],
                                                                               list[dict[str, Any]]]:
    """Fit the L levels on embeddings (N, d): codes (N, L) int64, codebooks [(K_l, d) float64], figures.

    K_l = min(K, distinct residuals at level l, to 1e-9 of the largest input value) (a small corpus
    cannot fill K codes). Raises
    ValueError on an empty input.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be (N, d) with N >= 1, got shape {x.shape}")
    residual = x.copy()
    # residuals closer than this count as one point (float residue of subtracting a centroid)
    resolution = 1e-9 * max(float(np.abs(x).max()), 1e-30)
    codes = np.zeros((len(x), config.num_levels), dtype=np.int64)
    codebooks: list[np.ndarray] = []
    figures: list[dict[str, Any]] = []
    with threadpool_limits(limits=config.threads):
        for level in range(config.num_levels):
            started = time.perf_counter()
            distinct = len(np.unique(np.round(residual / resolution) + 0.0, axis=0))
            k = min(config.codebook_size, distinct)
            if k >= 2:
                km = KMeans(n_clusters=k, n_init=config.kmeans_n_init, max_iter=config.kmeans_max_iter,
                            tol=config.kmeans_tol, random_state=config.seed + level)
                km.fit(residual)
                centroids = km.cluster_centers_.astype(np.float64)
            else:  # every residual is the same point: one code
                centroids = residual[:1].copy()
            labels = nearest_centroid(residual, centroids)
            labels, centroids = number_by_size(labels, centroids)
            codes[:, level] = labels
            codebooks.append(centroids)
            residual = residual - centroids[labels]
            figures.append({
                "level": level,
                "centroids": len(centroids),
                "distinct_residuals": int(distinct),
                "mean_residual_norm_after": float(np.linalg.norm(residual, axis=1).mean()),
                "kmeans_seconds": round(time.perf_counter() - started, 3),
            })
            logger.info("RK-means level %d: %d centroids, residual norm %.4f after it (%.1f s)", level,
                        len(centroids), figures[-1]["mean_residual_norm_after"], figures[-1]["kmeans_seconds"])
    return codes, codebooks, figures


def rkmeans_codes(embeddings: np.ndarray, codebooks: list[np.ndarray]) -> np.ndarray:
    """Greedy codes (N, L) of embeddings (N, d) under fitted codebooks: the rule `residual_kmeans` assigns
    with, so it reproduces the training codes and places a new document the same way."""
    residual = np.asarray(embeddings, dtype=np.float64).copy()
    codes = np.zeros((len(residual), len(codebooks)), dtype=np.int64)
    for level, centroids in enumerate(codebooks):
        codes[:, level] = nearest_centroid(residual, centroids)
        residual = residual - centroids[codes[:, level]]
    return codes


def learn_rkmeans_codes(documents: list[Document], config: RKMeansConfig, out_dir: Path) -> LearnedCodes:
    """Embed the documents, fit the levels, write the centroids (the learn-ids method contract)."""
    started = time.perf_counter()
    embeddings = config.embed([d.text for d in documents])
    embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    codes, codebooks, figures = residual_kmeans(embeddings, config)
    cluster_seconds = time.perf_counter() - started
    out_dir = Path(out_dir)
    save_file({f"codebook/{level}": np.ascontiguousarray(c) for level, c in enumerate(codebooks)},
              str(out_dir / "model.safetensors"))
    with open(out_dir / "config.json", "w", encoding="utf-8") as handle:
        json.dump({"method": "rkmeans", "settings": config_to_dict(config),
                   "embedding_dim": int(embeddings.shape[1]),
                   "codebook_sizes": [config.codebook_size] * config.num_levels,
                   "centroids_per_level": [len(c) for c in codebooks]}, handle, indent=2)
    diagnostics = {
        "levels": figures,
        "wall_seconds": {"embed": round(embed_seconds, 3), "cluster": round(cluster_seconds, 3)},
    }
    return LearnedCodes(codes=codes, codebook_sizes=(config.codebook_size,) * config.num_levels,
                        diagnostics=diagnostics, files={"checkpoint": "model.safetensors", "config": "config.json"})
