"""The hierarchical k-means (HC, "tree") indexer: recursive k-means on encoder embeddings.

The official baseline (`DS/embedding/construct_tree.py`): split the corpus with k-means into
`children` (50) clusters, and split again every cluster that holds at least `leaf_size` (512)
documents; a node with fewer documents than `leaf_size` is a leaf. A document's code is the path
of cluster indices from the root to its leaf. Ours adds:

- `first_children`: the root's number of children, separately (the benchmark compares indexers at
  256 first-level codes). 0 means `children`.
- the root is always split (otherwise a small corpus would get no learned level at all).
- inside a node, clusters are numbered by decreasing size (ties: k-means' own order), so code 0
  is the node's largest cluster and the numbering is deterministic for a fixed seed.
- fixed-length IDs for the trie: paths shorter than the deepest one are padded with code 0 up to
  L = the tree's depth. This is unambiguous: a padded path (a, 0) belongs to a leaf `a`, which has
  no children, so no real path starts with (a, 0) under a non-leaf. The collision counter (added by
  the ID table) then numbers the documents of a leaf, so it stays below `leaf_size`.
- a node that k-means cannot split (all its documents in one cluster, e.g. duplicates) or at
  `max_depth` becomes a leaf.

Checkpoint: `model.safetensors` holds the centroids of every split node under the key
`node/<path>` (e.g. `node/`, `node/3`, `node/3/17`), shape (children, d); `config.json` holds the
settings, the codebook sizes and the tree (path, documents, children of every node), so a new
document can be routed by nearest centroid from the root.
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
class HCConfig(EmbeddingSettings):
    """Settings of the hierarchical k-means indexer."""

    children: int = field(default=50, metadata={"help": "Children of every split node (balance factor)."})
    first_children: int = field(default=0, metadata={"help": "Children of the root; 0 = `children`."})
    leaf_size: int = field(default=512, metadata={"help": "A node with fewer documents than this is a leaf."})
    max_depth: int = field(default=8, metadata={"help": "Deepest level; a node there becomes a leaf."})
    kmeans_n_init: int = field(
        default=10, metadata={"help": "k-means restarts per split (best inertia wins)."}
    )
    kmeans_max_iter: int = field(default=300, metadata={"help": "k-means iterations per restart."})
    seed: int = field(default=42, metadata={"help": "Seed of every k-means."})
    threads: int = field(default=2, metadata={"help": "BLAS/OpenMP threads for k-means."})

    def __post_init__(self) -> None:
        if self.children < 2 or self.first_children < 0 or self.first_children == 1:
            raise ConfigError("children must be >= 2 and first_children 0 or >= 2")
        if self.leaf_size < 2:
            raise ConfigError(f"leaf_size must be >= 2, got {self.leaf_size}")
        if self.max_depth < 1 or self.kmeans_n_init < 1 or self.kmeans_max_iter < 1:
            raise ConfigError("max_depth, kmeans_n_init and kmeans_max_iter must be >= 1")

    @property
    def root_children(self) -> int:
        return self.first_children or self.children


def kmeans_labels(
    x: np.ndarray, k: int, seed: int, n_init: int, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of x (n, d) into k clusters numbered by decreasing size: labels (n,), centroids (k', d).

    k' <= k: clusters k-means left empty are dropped (their numbers are reused by the next ones).
    """
    k = min(k, len(x))
    model = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed)
    raw = model.fit_predict(x)
    sizes = np.bincount(raw, minlength=k)
    order = np.lexsort((np.arange(k), -sizes))  # largest first, ties by k-means' label
    order = order[sizes[order] > 0]
    relabel = np.full(k, -1, dtype=np.int64)
    relabel[order] = np.arange(len(order))
    return relabel[raw], model.cluster_centers_[order].astype(np.float32)


@dataclass
class _Node:
    path: tuple[int, ...]
    size: int
    children: int = 0


def hierarchical_kmeans(
    embeddings: np.ndarray, config: HCConfig
) -> tuple[list[list[int]], dict[str, np.ndarray], list[_Node]]:
    """Paths (variable length, one per row), centroids per split node, and the node list."""
    n = len(embeddings)
    paths: list[list[int]] = [[] for _ in range(n)]
    centroids: dict[str, np.ndarray] = {}
    nodes: list[_Node] = []
    # Breadth-first over (path, row indices) so the log reads level by level.
    queue: list[tuple[tuple[int, ...], np.ndarray]] = [((), np.arange(n))]
    with threadpool_limits(limits=config.threads):
        while queue:
            path, rows = queue.pop(0)
            depth = len(path)
            node = _Node(path, len(rows))
            nodes.append(node)
            is_root = depth == 0
            if depth >= config.max_depth or len(rows) < 2 or (not is_root and len(rows) < config.leaf_size):
                continue
            k = config.root_children if is_root else config.children
            # A different seed per node keeps splits independent yet reproducible.
            seed = (config.seed * 1_000_003 + hash_path(path)) % (2**31)
            labels, centers = kmeans_labels(
                embeddings[rows], k, seed, config.kmeans_n_init, config.kmeans_max_iter
            )
            if len(centers) < 2 and not is_root:
                continue  # k-means could not separate these documents: keep them in one leaf
            node.children = len(centers)
            centroids["node/" + "/".join(map(str, path))] = centers
            for child in range(len(centers)):
                child_rows = rows[labels == child]
                for row in child_rows:
                    paths[row].append(child)
                queue.append(((*path, child), child_rows))
            if is_root:
                logger.info("HC: root split into %d clusters", len(centers))
    return paths, centroids, nodes


def hash_path(path: tuple[int, ...]) -> int:
    """A stable (not salted like hash()) integer of a tree path."""
    value = 17
    for code in path:
        value = (value * 1_000_003 + code + 1) % (2**61 - 1)
    return value


def pad_paths(paths: list[list[int]], pad: int = 0) -> np.ndarray:
    """(N, depth) int64: each path padded with `pad` up to the longest one."""
    depth = max(len(p) for p in paths)
    out = np.full((len(paths), depth), pad, dtype=np.int64)
    for i, p in enumerate(paths):
        out[i, : len(p)] = p
    return out


def learn_hc_codes(documents: list[Document], config: HCConfig, out_dir: Path) -> LearnedCodes:
    """Embed the documents, build the tree, write the centroids; codes padded with 0 (see above)."""
    started = time.perf_counter()
    embeddings = config.embed([d.text for d in documents])
    embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    paths, centroids, nodes = hierarchical_kmeans(embeddings, config)
    cluster_seconds = time.perf_counter() - started
    codes = pad_paths(paths)
    depth = codes.shape[1]
    codebook_sizes = tuple(
        max([node.children for node in nodes if len(node.path) == level] + [1]) for level in range(depth)
    )
    lengths = np.array([len(p) for p in paths])
    leaves = [node for node in nodes if node.children == 0]
    out_dir = Path(out_dir)
    save_file(centroids, str(out_dir / "model.safetensors"))
    tree = [{"path": list(node.path), "documents": node.size, "children": node.children} for node in nodes]
    with open(out_dir / "config.json", "w", encoding="utf-8") as handle:
        json.dump(
            {
                "method": "hc",
                "settings": config_to_dict(config),
                "codebook_sizes": list(codebook_sizes),
                "embedding_dim": int(embeddings.shape[1]),
                "padding_code": 0,
                "tree": tree,
            },
            handle,
        )
    diagnostics: dict[str, Any] = {
        "leaves": len(leaves),
        "largest_leaf": max(node.size for node in leaves),
        "path_length_histogram": {
            str(int(v)): int(c) for v, c in zip(*np.unique(lengths, return_counts=True), strict=True)
        },
        "padded_documents": int((lengths < depth).sum()),
        "wall_seconds": {"embed": round(embed_seconds, 3), "cluster": round(cluster_seconds, 3)},
    }
    logger.info("HC: %d leaves, depth %d, codebook sizes %s", len(leaves), depth, codebook_sizes)
    return LearnedCodes(
        codes=codes,
        codebook_sizes=codebook_sizes,
        diagnostics=diagnostics,
        files={"checkpoint": "model.safetensors", "config": "config.json"},
    )
