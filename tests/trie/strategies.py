"""Hypothesis strategies and fakes shared by the trie tests (tiny shapes, so every example is cheap)."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import strategies as st

from trie import SemanticIdTrie


@st.composite
def codebook_sizes(draw: st.DrawFn, max_levels: int = 3, max_size: int = 5) -> tuple[int, ...]:
    """Learned levels of size 1..max_size plus a counter level."""
    learned = draw(st.integers(1, max_levels))
    return tuple(draw(st.lists(st.integers(1, max_size), min_size=learned + 1, max_size=learned + 1)))


@st.composite
def id_sets(draw: st.DrawFn, min_size: int = 0, max_size: int = 40) -> tuple[tuple[int, ...], np.ndarray]:
    """(codebook_sizes, unique IDs (N, L+1) in random order)."""
    sizes = draw(codebook_sizes())
    capacity = int(np.prod(sizes))
    count = draw(st.integers(min(min_size, capacity), min(max_size, capacity)))
    flat = draw(st.lists(st.integers(0, capacity - 1), min_size=count, max_size=count, unique=True))
    ids = np.array(np.unravel_index(np.array(flat, dtype=np.int64), sizes), dtype=np.int64).T.reshape(-1, len(sizes))
    return sizes, ids


def all_prefixes(sizes: tuple[int, ...]) -> np.ndarray:
    """Every possible code sequence of the given sizes ``(prod(sizes), len(sizes))``, lexicographic order."""
    rows = list(itertools.product(*(range(size) for size in sizes)))  # [()] when sizes is empty
    return np.array(rows, dtype=np.int64).reshape(len(rows), len(sizes))


class TableStepFn:
    """A deterministic fake model: log-probs looked up from a table by (query, level, prefix hash).

    ``distinct_values`` small makes ties frequent, which exercises the tie-breaking rule. Records
    every call so tests can check what the search asked for.
    """

    def __init__(self, sizes: tuple[int, ...], seed: int, distinct_values: int | None = None) -> None:
        rng = np.random.default_rng(seed)
        width = max(sizes)
        table = rng.standard_normal((97, width))
        if distinct_values is not None:
            table = np.round(rng.integers(0, distinct_values, (97, width)) * -0.5, 1)
        self.table = table
        self.sizes = sizes
        self.calls: list[tuple[int, np.ndarray, np.ndarray]] = []

    def __call__(self, level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        self.calls.append((level, query_index.copy(), prefixes.copy()))
        weights = np.arange(1, prefixes.shape[1] + 1) * 7 + 3
        slot = (query_index * 13 + level * 5 + (prefixes * weights).sum(axis=1)) % len(self.table)
        return self.table[slot][:, : self.sizes[level]]

    def brute_force(self, ids: np.ndarray, query: int) -> tuple[np.ndarray, np.ndarray]:
        """Every ID scored the way the search sums (float64, level order), best first, ties by ID order."""
        scores = np.zeros(len(ids))
        for level in range(ids.shape[1]):
            log_probs = self(level, np.full(len(ids), query), ids[:, :level])
            scores = scores + log_probs[np.arange(len(ids)), ids[:, level]]
        self.calls.clear()
        order = np.lexsort((*ids.T[::-1], -scores))
        return ids[order], scores[order]


def build(sizes: tuple[int, ...], ids: np.ndarray) -> SemanticIdTrie:
    return SemanticIdTrie.build(ids, codebook_sizes=sizes)
