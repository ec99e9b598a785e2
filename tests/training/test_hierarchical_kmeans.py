"""The hierarchical k-means indexer: leaf size, children counts, padding, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from training.errors import ConfigError
from training.indexing.hierarchical_kmeans import HCConfig, hierarchical_kmeans, pad_paths
from training.indexing.id_table import assign_semantic_ids


def points(n: int = 1500, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, d)) * 3
    return (centres[rng.integers(0, 30, n)] + rng.standard_normal((n, d))).astype(np.float32)


def config(**changes) -> HCConfig:
    return HCConfig(**{"children": 5, "leaf_size": 60, "kmeans_n_init": 1, "kmeans_max_iter": 50, "seed": 3,
                       **changes})


@pytest.mark.parametrize(("leaf_size", "depth"), [(60, 2), (20, 3)])
def test_leaf_size_and_children_are_respected(leaf_size, depth):
    paths, centroids, nodes = hierarchical_kmeans(points(), config(first_children=12, leaf_size=leaf_size))
    root = nodes[0]
    assert root.path == () and root.children == 12
    for node in nodes[1:]:
        if node.children:  # split nodes held at least leaf_size documents
            assert node.size >= leaf_size and node.children <= 5
        else:  # leaves hold fewer than leaf_size documents (max_depth is not reached here)
            assert node.size < leaf_size
    # ~125 documents per first-level node: one more split below leaf 60, two more below leaf 20.
    assert max(len(p) for p in paths) >= depth
    assert set(centroids) == {"node/" + "/".join(map(str, n.path)) for n in nodes if n.children}
    assert centroids["node/"].shape == (12, 16)
    # Codes are numbered by decreasing cluster size inside each node.
    first = np.array([p[0] for p in paths])
    sizes = np.bincount(first)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_padding_keeps_ids_unique_and_counter_below_leaf_size():
    paths, _, _ = hierarchical_kmeans(points(), config())
    codes = pad_paths(paths)
    assert codes.shape == (1500, max(len(p) for p in paths))
    for p, row in zip(paths, codes, strict=True):
        assert row[: len(p)].tolist() == p and not row[len(p) :].any()
    table = assign_semantic_ids(codes, [str(i) for i in range(1500)])
    assert len({tuple(r) for r in table.semantic_ids.tolist()}) == 1500
    assert table.counter_size <= 60  # the counter numbers the documents of one leaf


def test_deterministic_for_a_seed():
    a, _, _ = hierarchical_kmeans(points(), config())
    b, _, _ = hierarchical_kmeans(points(), config())
    assert a == b


def test_small_corpus_still_gets_a_first_level():
    paths, _, nodes = hierarchical_kmeans(points(n=40), config(leaf_size=512))
    assert all(len(p) == 1 for p in paths) and nodes[0].children == 5


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError):
        HCConfig(children=1)
    with pytest.raises(ConfigError):
        HCConfig(leaf_size=0)
