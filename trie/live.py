"""LiveTrie: the one mutable holder of the current trie version.

Writers are serialised by a lock and publish a complete new version with one attribute store;
readers take :attr:`LiveTrie.current` once per batch and keep using that (immutable) version, so a
reader never sees a half-applied update and never waits for a writer.

>>> import numpy as np
>>> live = LiveTrie(SemanticIdTrie.build(np.array([[0, 0, 0]]), codebook_sizes=[2, 2, 4]))
>>> snapshot = live.current
>>> live.insert_with_counters(np.array([[0, 0], [0, 0]]), rows=np.array([1, 2])).tolist()
[[0, 0, 1], [0, 0, 2]]
>>> len(snapshot), len(live.current), live.current.version
(1, 3, 1)
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from trie.errors import TrieError
from trie.semantic_id_trie import SemanticIdTrie


class LiveTrie:
    """A mutable reference to an immutable :class:`SemanticIdTrie`, updated under a lock."""

    def __init__(self, trie: SemanticIdTrie) -> None:
        self._lock = threading.Lock()
        self._current = trie

    @property
    def current(self) -> SemanticIdTrie:
        """The latest published version. Take it once per batch of work and use only that."""
        return self._current

    @property
    def version(self) -> int:
        return self._current.version

    def insert(self, ids: Any, rows: Any) -> SemanticIdTrie:
        """Insert ``ids`` ``(M, L+1)`` at ``rows`` ``(M,)``; returns the new version (errors: as ``with_inserted``)."""
        with self._lock:
            self._current = self._current.with_inserted(ids, rows)
            return self._current

    def insert_with_counters(self, learned: Any, rows: Any) -> np.ndarray:
        """Give each learned prefix ``(M, L)`` the next free counter and insert it, atomically.

        Returns the new semantic IDs ``(M, L+1)``. Doing both under the writer lock means two
        concurrent callers can never be handed the same counter.
        """
        with self._lock:
            current = self._current
            counters = current.next_counters(learned)
            learned_codes = np.asarray(learned, dtype=np.int64).reshape(len(counters), current.depth - 1)
            ids = np.concatenate([learned_codes, counters[:, None]], axis=1)
            self._current = current.with_inserted(ids, rows)
            return ids

    def remove(self, ids: Any) -> SemanticIdTrie:
        """Remove ``ids`` ``(M, L+1)``; returns the new version (errors: as ``with_removed``)."""
        with self._lock:
            self._current = self._current.with_removed(ids)
            return self._current

    def replace(self, trie: SemanticIdTrie) -> SemanticIdTrie:
        """Publish another trie (e.g. a freshly loaded bundle). Its version is raised above the current one
        if needed, so versions only ever increase (caches keyed by version stay correct)."""
        with self._lock:
            if trie.codebook_sizes != self._current.codebook_sizes:
                raise TrieError(
                    f"replacement has codebook_sizes {list(trie.codebook_sizes)}, "
                    f"the live trie {list(self._current.codebook_sizes)}"
                )
            if trie.version <= self._current.version:
                trie = trie.with_version(self._current.version + 1)
            self._current = trie
            return trie
