"""SemanticIdTrie: the immutable, versioned set of valid semantic IDs and their document rows.

A version is three immutable layers plus tombstones, all shared (never copied) by later versions:

- ``base``: the big compacted layer (built vectorised, or memory-mapped from a file);
- ``tombstones``: sorted base leaves removed since the last compaction;
- ``mid``: IDs inserted since the last compaction (up to ``max(4096, len(base) / 16)``, with tombstones);
- ``tiny``: the most recent inserts (at most 256), the only array an insert copies.

An insert copies only ``tiny`` (O(256)), merges it into ``mid`` every 256 IDs (O(len(mid))), and rebuilds
``base`` when the delta passes its bound (O(N), amortised over >= N/16 inserts). Readers never see a
half-applied update: a version object is never modified after construction (the lazily built node
arrays of a small layer are a pure function of its keys). An ID lives in exactly one layer.

>>> trie = SemanticIdTrie.build(np.array([[1, 2, 0], [1, 2, 1], [3, 0, 0]]), codebook_sizes=[4, 4, 2])
>>> len(trie), trie.row_of((1, 2, 1)), trie.semantic_id_of(2)
(3, 1, (3, 0, 0))
>>> trie.allowed_mask(np.array([[1]])).nonzero()[1].tolist()
[2]
>>> trie2 = trie.with_inserted(np.array([[1, 3, 0]]), rows=np.array([3]))
>>> trie2.version, len(trie2), len(trie), trie2.row_of((1, 3, 0))
(1, 4, 3, 3)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trie.errors import (
    DuplicateRowError,
    DuplicateSemanticIdError,
    InvalidSemanticIdError,
    MissingSemanticIdError,
    TrieError,
    TrieFormatError,
)
from trie.keys import KeyCodec
from trie.layer import Csr, Layer, RowIndex, index_dtype
from trie.storage import read_arrays, write_arrays

logger = logging.getLogger(__name__)

#: ``tiny`` is merged into ``mid`` when it holds more IDs than this.
TINY_MAX = 256
#: The delta (``mid`` + tombstones) is compacted into ``base`` past ``max(DELTA_MIN, len(base) // DELTA_DIVISOR)``.
DELTA_MIN = 4096
DELTA_DIVISOR = 16


@dataclass(frozen=True, eq=False)
class TrieState:
    """The positions of ``n`` beams in a trie version: what constrained beam search carries per beam.

    ``nodes`` ``(n, 3)`` int64: each beam's node at ``depth`` in the base, mid and tiny layers (-1: the
    prefix is not in that layer). Only valid for the trie version that made it.
    """

    depth: int
    nodes: np.ndarray

    def __len__(self) -> int:
        return len(self.nodes)


def _in_sorted(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted haystack: one binary search per value."""
    if len(sorted_values) == 0:
        return np.zeros(len(values), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[position] == values


class SemanticIdTrie:
    """An immutable prefix trie of fixed-length semantic IDs; each ID names one document row.

    Build it with :meth:`build` or :meth:`load`; update it with :meth:`with_inserted` /
    :meth:`with_removed`, which return a new version and leave this one untouched.
    """

    __slots__ = ("_base", "_codec", "_dead", "_mid", "_tiny", "_tombstones", "_version")

    def __init__(
        self,
        codec: KeyCodec,
        base: Layer,
        tombstones: np.ndarray,
        mid: Layer,
        tiny: Layer,
        version: int,
    ) -> None:
        """Internal: use :meth:`build`, :meth:`load` or the ``with_*`` methods."""
        self._codec = codec
        self._base = base
        self._tombstones = tombstones
        self._mid = mid
        self._tiny = tiny
        self._version = version
        self._dead: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...] | None = None

    # ----------------------------------------------------------------------------------------- build

    @classmethod
    def build(
        cls,
        ids: Any,
        codebook_sizes: Sequence[int],
        rows: Any = None,
        version: int = 0,
    ) -> SemanticIdTrie:
        """Build a trie from ``ids`` ``(N, L+1)``; row ``i`` (or ``rows[i]``) is the document of ``ids[i]``.

        Vectorised: one sort of packed keys, then O(N) numpy work per level.
        Raises :class:`InvalidSemanticIdError` for bad shapes or codes, :class:`DuplicateSemanticIdError`
        (naming the IDs) when an ID occurs twice, :class:`DuplicateRowError` when a row does.
        """
        codec = KeyCodec(tuple(codebook_sizes))
        array = codec.validate(ids)
        row_array = cls._validate_rows(rows, len(array)) if rows is not None else np.arange(len(array))
        keys = codec.pack(array)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        cls._raise_on_duplicate_keys(codec, keys, "build")
        row_array = row_array[order]
        cls._raise_on_duplicate_rows(row_array)
        base = cls._compact_layer(codec, keys, row_array)
        empty = Layer.empty(codec)
        return cls(codec, base, np.zeros(0, dtype=np.int64), empty, empty, version)

    @staticmethod
    def _compact_layer(codec: KeyCodec, keys: np.ndarray, rows: np.ndarray) -> Layer:
        rows = rows.astype(index_dtype(int(rows.max()) if len(rows) else 0))
        csr = Csr.build(keys, codec)
        row_index = RowIndex.build(rows)
        # Shared by every later version and by concurrent readers: make accidental writes fail loudly.
        for array in (keys, rows, *csr.child_offsets, *csr.node_codes, *row_index.arrays.values()):
            array.flags.writeable = False
        for bitmap in csr.bitmaps:
            if bitmap is not None:
                bitmap.flags.writeable = False
        return Layer(codec, keys, rows, csr=csr, row_index=row_index)

    @staticmethod
    def _validate_rows(rows: Any, count: int) -> np.ndarray:
        array = np.asarray(rows)
        if array.size == 0 and count == 0:
            return np.zeros(0, dtype=np.int64)
        if array.dtype.kind not in "iu":
            raise InvalidSemanticIdError(f"rows must be integers, got dtype {array.dtype}")
        if array.shape != (count,):
            raise InvalidSemanticIdError(f"rows must have shape ({count},), one per ID, got {array.shape}")
        array = array.astype(np.int64)
        if (array < 0).any():
            raise InvalidSemanticIdError(f"rows must be >= 0, got {array[array < 0][:20].tolist()}")
        return array

    @staticmethod
    def _raise_on_duplicate_keys(codec: KeyCodec, sorted_keys: np.ndarray, what: str) -> None:
        repeated = sorted_keys[1:] == sorted_keys[:-1]
        if repeated.any():
            duplicates = codec.unpack(np.unique(sorted_keys[1:][repeated]))
            raise DuplicateSemanticIdError(
                f"{len(duplicates)} semantic ID(s) occur more than once in {what}: {codec.format_ids(duplicates)}",
                [tuple(int(c) for c in row) for row in duplicates],
            )

    @staticmethod
    def _raise_on_duplicate_rows(rows: np.ndarray) -> None:
        sorted_rows = np.sort(rows)
        repeated = sorted_rows[1:] == sorted_rows[:-1]
        if repeated.any():
            duplicates = np.unique(sorted_rows[1:][repeated]).tolist()
            raise DuplicateRowError(f"document rows given more than once: {duplicates[:20]}", duplicates)

    # ----------------------------------------------------------------------------------- properties

    def __len__(self) -> int:
        return len(self._base) - len(self._tombstones) + len(self._mid) + len(self._tiny)

    def __repr__(self) -> str:
        return (
            f"SemanticIdTrie(num_ids={len(self)}, codebook_sizes={list(self.codebook_sizes)}, "
            f"version={self._version}, delta={len(self._mid) + len(self._tiny)}+{len(self._tombstones)})"
        )

    @property
    def depth(self) -> int:
        """Codes per semantic ID: ``L + 1`` (the learned levels plus the counter)."""
        return self._codec.depth

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Codes per level, the counter level last."""
        return self._codec.codebook_sizes

    @property
    def version(self) -> int:
        """The index version: +1 for every update."""
        return self._version

    @property
    def delta_size(self) -> int:
        """Updates held outside the compacted base (inserted IDs + removed base IDs)."""
        return len(self._mid) + len(self._tiny) + len(self._tombstones)

    @property
    def nbytes(self) -> int:
        """Bytes held by this version's arrays (memory-mapped ones included)."""
        total = self._tombstones.nbytes
        for layer in self._layers:
            total += layer.keys.nbytes + layer.rows.nbytes
            csr = layer._csr
            if csr is not None:
                arrays = [*csr.child_offsets, *csr.node_codes, *(b for b in csr.bitmaps if b is not None)]
                total += sum(a.nbytes for a in arrays)
            if layer._row_index is not None:
                total += sum(a.nbytes for a in layer._row_index.arrays.values())
        return total

    @property
    def _layers(self) -> tuple[Layer, Layer, Layer]:
        return (self._base, self._mid, self._tiny)

    # ------------------------------------------------------------------------------------- lookups

    def _live_base_leaves(self, keys: np.ndarray) -> np.ndarray:
        leaves = self._base.find(keys)
        if len(self._tombstones):
            leaves = np.where(_in_sorted(self._tombstones, leaves), -1, leaves)
        return leaves

    def _rows_of_keys(self, keys: np.ndarray) -> np.ndarray:
        rows = np.full(len(keys), -1, dtype=np.int64)
        leaves = self._live_base_leaves(keys)
        found = leaves >= 0
        rows[found] = self._base.rows[leaves[found]]
        for layer in (self._mid, self._tiny):
            if len(layer):
                leaves = layer.find(keys)
                found = leaves >= 0
                rows[found] = layer.rows[leaves[found]]
        return rows

    def rows_of(self, ids: Any) -> np.ndarray:
        """Document row of each semantic ID ``(M, L+1)`` -> ``(M,)`` int64, -1 where absent."""
        array = self._codec.validate(ids)
        return self._rows_of_keys(self._codec.pack(array))

    def row_of(self, semantic_id: Sequence[int]) -> int | None:
        """Document row of one semantic ID, or None when it is not in the trie."""
        row = int(self.rows_of(np.asarray(semantic_id).reshape(1, -1))[0])
        return None if row < 0 else row

    def __contains__(self, semantic_id: object) -> bool:
        try:
            return self.row_of(semantic_id) is not None  # type: ignore[arg-type]
        except InvalidSemanticIdError:
            return False

    def semantic_ids_of(self, rows: Any) -> np.ndarray:
        """Semantic ID of each document row ``(M,)`` -> ``(M, L+1)`` int64, rows of -1 where a row holds no ID."""
        row_array = np.asarray(rows, dtype=np.int64).reshape(-1)
        keys = np.full(len(row_array), -1, dtype=np.int64)
        leaves = self._base.row_index.leaves_of(row_array)
        if len(self._tombstones):
            leaves = np.where(_in_sorted(self._tombstones, leaves), -1, leaves)
        found = leaves >= 0
        keys[found] = self._base.keys[leaves[found]]
        for layer in (self._mid, self._tiny):
            if len(layer):
                leaves = layer.row_index.leaves_of(row_array)
                found = leaves >= 0
                keys[found] = layer.keys[leaves[found]]
        ids = self._codec.unpack(np.maximum(keys, 0))
        ids[keys < 0] = -1
        return ids

    def semantic_id_of(self, row: int) -> tuple[int, ...] | None:
        """Semantic ID of one document row, or None when the row holds no ID."""
        ids = self.semantic_ids_of(np.array([row]))[0]
        return None if ids[0] < 0 else tuple(int(c) for c in ids)

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All live IDs in lexicographic order ``(N, L+1)`` and their rows ``(N,)`` int64."""
        keys, rows = self._live_keys_and_rows()
        return self._codec.unpack(keys), rows.astype(np.int64)

    def _live_keys_and_rows(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.delete(self._base.keys, self._tombstones)
        rows = np.delete(self._base.rows, self._tombstones).astype(np.int64)
        for layer in (self._mid, self._tiny):
            if len(layer):
                position = np.searchsorted(keys, layer.keys)
                keys = np.insert(keys, position, layer.keys)
                rows = np.insert(rows, position, layer.rows)
        return keys, rows

    # ------------------------------------------------------------------------ allowed codes, states

    def root_state(self, num_beams: int) -> TrieState:
        """``num_beams`` beams at the root (the empty prefix)."""
        nodes = np.zeros((num_beams, 3), dtype=np.int64)
        for column, layer in enumerate(self._layers):
            if len(layer) == 0:
                nodes[:, column] = -1
        return TrieState(0, nodes)

    def _prefix_width(self, prefixes: Any, longest: int) -> int:
        width = np.asarray(prefixes).shape[1] if np.ndim(prefixes) == 2 else -1
        if not 0 <= width <= longest:
            raise InvalidSemanticIdError(
                f"prefixes must have shape (M, t) with 0 <= t <= {longest}, got shape {np.shape(prefixes)}"
            )
        return width

    def state_of(self, prefixes: Any) -> TrieState:
        """The state of prefixes ``(M, t)`` (``t <= L+1``; full IDs give leaf states for :meth:`rows_at`).

        Prefixes not in the trie get no node.
        """
        width = self._prefix_width(prefixes, self.depth)
        array = self._codec.validate(prefixes, width=width, what="prefixes")
        state = self.root_state(len(array))
        beams = np.arange(len(array))
        for level in range(width):
            state = self.advance(state, beams, array[:, level])
        return state

    def allowed_mask(self, prefixes: Any) -> np.ndarray:
        """Which codes may follow each prefix: prefixes ``(M, t)``, ``t <= L`` -> bool ``(M, codebook_sizes[t])``.

        A prefix that is not in the trie gets an all-False row.
        """
        self._prefix_width(prefixes, self.depth - 1)
        return self.allowed_mask_at(self.state_of(prefixes))

    def allowed_mask_at(self, state: TrieState) -> np.ndarray:
        """Which codes may follow each beam of ``state``: bool ``(len(state), codebook_sizes[state.depth])``."""
        depth = state.depth
        size = self._codec.codebook_sizes[depth]
        mask: np.ndarray | None = None
        for column, layer in enumerate(self._layers):
            if len(layer) == 0:
                continue
            nodes = state.nodes[:, column]
            layer_mask = layer.csr.mask(nodes, depth, size)
            if column == 0 and len(self._tombstones):
                self._clear_dead_children(layer_mask, nodes, depth)
            if mask is None:
                mask = layer_mask
            else:
                mask |= layer_mask
        return mask if mask is not None else np.zeros((len(state), size), dtype=bool)

    def advance(self, state: TrieState, beams: np.ndarray, codes: np.ndarray) -> TrieState:
        """Extend beam ``beams[i]`` of ``state`` by code ``codes[i]`` -> a state one level deeper ``(len(beams),)``.

        A code that is not allowed gives a beam with no node (its mask will be all False).
        """
        if state.depth >= self.depth:
            raise TrieError("cannot advance past the last level")
        parents = state.nodes[beams]
        codes = np.asarray(codes, dtype=np.int64)
        nodes = np.full_like(parents, -1)
        for column, layer in enumerate(self._layers):
            if len(layer) == 0:
                continue
            children = layer.csr.child(parents[:, column], state.depth, codes)
            if column == 0 and len(self._tombstones):
                dead_nodes = self._dead_nodes()[state.depth][0]
                children = np.where(_in_sorted(dead_nodes, children), -1, children)
            nodes[:, column] = children
        return TrieState(state.depth + 1, nodes)

    def rows_at(self, state: TrieState) -> np.ndarray:
        """Document rows of complete beams (``state.depth == L+1``) ``(n,)`` int64, -1 for a beam with no ID."""
        if state.depth != self.depth:
            raise TrieError(f"rows_at needs complete IDs (depth {self.depth}), got depth {state.depth}")
        rows = np.full(len(state), -1, dtype=np.int64)
        for column, layer in enumerate(self._layers):
            leaves = state.nodes[:, column]
            found = leaves >= 0
            rows[found] = layer.rows[leaves[found]]
        return rows

    def _dead_nodes(self) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
        """Per depth ``d`` in ``0..D-1``: the base's depth-``d+1`` nodes whose every leaf is removed,
        with their parents and codes, all sorted by node (hence by parent)."""
        dead = self._dead
        if dead is None:
            csr = self._base.csr
            per_depth: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * self.depth
            nodes = self._tombstones
            for depth in range(self.depth, 0, -1):
                per_depth[depth - 1] = nodes
                offsets = csr.child_offsets[depth - 1]
                parents = np.searchsorted(offsets, nodes, side="right") - 1
                unique_parents, dead_children = np.unique(parents, return_counts=True)
                fanout = offsets[unique_parents + 1] - offsets[unique_parents]
                nodes = unique_parents[dead_children == fanout]
            dead = tuple(
                (
                    nodes,
                    np.searchsorted(csr.child_offsets[depth], nodes, side="right") - 1,
                    csr.node_codes[depth][nodes].astype(np.int64),
                )
                for depth, nodes in enumerate(per_depth)
            )
            self._dead = dead
        return dead

    def _clear_dead_children(self, mask: np.ndarray, nodes: np.ndarray, depth: int) -> None:
        _, parents, codes = self._dead_nodes()[depth]
        if len(parents) == 0:
            return
        start = np.searchsorted(parents, nodes, side="left")
        count = np.where(nodes >= 0, np.searchsorted(parents, nodes, side="right") - start, 0)
        total = int(count.sum())
        if total:
            ends = np.cumsum(count)
            dead = np.arange(total) + np.repeat(start - (ends - count), count)
            mask[np.repeat(np.arange(len(nodes)), count), codes[dead]] = False

    # ------------------------------------------------------------------------------------- updates

    def with_inserted(self, ids: Any, rows: Any) -> SemanticIdTrie:
        """A new version (``version + 1``) that also holds ``ids`` ``(M, L+1)`` at document ``rows`` ``(M,)``.

        Raises :class:`DuplicateSemanticIdError` if an ID is given twice or already present and
        :class:`DuplicateRowError` if a row is given twice or already holds an ID; nothing is inserted then.
        """
        fast = self._inserted_one(ids, rows)
        if fast is not None:
            return fast
        codec = self._codec
        array = codec.validate(ids)
        row_array = self._validate_rows(rows, len(array))
        keys = codec.pack(array)
        if len(keys) > 1:
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            row_array = row_array[order]
            self._raise_on_duplicate_keys(codec, keys, "the inserted IDs")
            self._raise_on_duplicate_rows(row_array)
        present = self._rows_of_keys(keys) >= 0
        if present.any():
            duplicates = codec.unpack(keys[present])
            raise DuplicateSemanticIdError(
                f"{len(duplicates)} semantic ID(s) are already in the trie: {codec.format_ids(duplicates)}",
                [tuple(int(c) for c in row) for row in duplicates],
            )
        taken = self._rows_taken(row_array)
        if taken.any():
            bad_rows = row_array[taken].tolist()
            raise DuplicateRowError(f"document rows already hold a semantic ID: {bad_rows[:20]}", bad_rows)
        tiny = self._tiny.merged(keys, row_array)
        mid = self._mid
        if len(tiny) > TINY_MAX:
            mid = mid.merged(tiny.keys, tiny.rows)
            tiny = Layer.empty(codec)
        return self._next_version(self._tombstones, mid, tiny)

    def _inserted_one(self, ids: Any, rows: Any) -> SemanticIdTrie | None:
        """The common single-document insert with Python scalars (a few us instead of ~40 numpy calls).

        Returns None whenever anything is unusual (shape, range, duplicate, taken row): the general
        path then handles it, including raising the error with its full message.
        """
        array = np.asarray(ids)
        row_array = np.asarray(rows)
        if array.shape != (1, self.depth) or row_array.shape != (1,):
            return None
        if array.dtype.kind not in "iu" or row_array.dtype.kind not in "iu":
            return None
        codes = array[0].tolist()
        row = int(row_array[0])
        codec = self._codec
        key = 0
        for code, size, shift in zip(codes, codec.codebook_sizes, codec.prefix_shifts[1:], strict=True):
            if not 0 <= code < size:
                return None
            key |= code << shift
        if row < 0 or self._holds_key(key) or self._holds_row(row):
            return None
        tiny = self._tiny.with_one(key, row)
        mid = self._mid
        if len(tiny) > TINY_MAX:
            mid = mid.merged(tiny.keys, tiny.rows)
            tiny = Layer.empty(codec)
        return self._next_version(self._tombstones, mid, tiny)

    def _holds_key(self, key: int) -> bool:
        leaf = self._base.find_one(key)
        if leaf >= 0 and not self._is_tombstone(leaf):
            return True
        return self._mid.find_one(key) >= 0 or self._tiny.find_one(key) >= 0

    def _holds_row(self, row: int) -> bool:
        leaf = self._base.row_index.leaf_of(row)
        if leaf >= 0 and not self._is_tombstone(leaf):
            return True
        return self._mid.holds_row(row) or self._tiny.holds_row(row)

    def _is_tombstone(self, leaf: int) -> bool:
        tombstones = self._tombstones
        if len(tombstones) == 0:
            return False
        position = int(tombstones.searchsorted(leaf))
        return position < len(tombstones) and int(tombstones[position]) == leaf

    def _rows_taken(self, rows: np.ndarray) -> np.ndarray:
        """Whether each row ``(M,)`` already holds a live ID."""
        leaves = self._base.row_index.leaves_of(rows)
        if len(self._tombstones):
            leaves = np.where(_in_sorted(self._tombstones, leaves), -1, leaves)
        taken = leaves >= 0
        for layer in (self._mid, self._tiny):
            if len(layer):
                # Sorted rows (carried through merges), not the row index: no sort per insert batch.
                taken |= _in_sorted(layer.sorted_rows, rows)
        return taken

    def with_removed(self, ids: Any) -> SemanticIdTrie:
        """A new version (``version + 1``) without ``ids`` ``(M, L+1)``; their rows become free.

        Raises :class:`MissingSemanticIdError` (nothing removed) if an ID is not in the trie and
        :class:`DuplicateSemanticIdError` if an ID is given twice.
        """
        codec = self._codec
        array = codec.validate(ids)
        keys = np.sort(codec.pack(array))
        self._raise_on_duplicate_keys(codec, keys, "the removed IDs")
        base_leaves = self._live_base_leaves(keys)
        mid_leaves = self._mid.find(keys)
        tiny_leaves = self._tiny.find(keys)
        missing = (base_leaves < 0) & (mid_leaves < 0) & (tiny_leaves < 0)
        if missing.any():
            absent = codec.unpack(keys[missing])
            raise MissingSemanticIdError(
                f"{len(absent)} semantic ID(s) to remove are not in the trie: {codec.format_ids(absent)}",
                [tuple(int(c) for c in row) for row in absent],
            )
        tombstones = self._tombstones
        if (base_leaves >= 0).any():
            tombstones = np.union1d(tombstones, base_leaves[base_leaves >= 0]).astype(np.int64)
        mid = self._mid.without(mid_leaves[mid_leaves >= 0]) if (mid_leaves >= 0).any() else self._mid
        tiny = self._tiny.without(tiny_leaves[tiny_leaves >= 0]) if (tiny_leaves >= 0).any() else self._tiny
        return self._next_version(tombstones, mid, tiny)

    def _next_version(self, tombstones: np.ndarray, mid: Layer, tiny: Layer) -> SemanticIdTrie:
        limit = max(DELTA_MIN, len(self._base) // DELTA_DIVISOR)
        following = SemanticIdTrie(self._codec, self._base, tombstones, mid, tiny, self._version + 1)
        if len(mid) + len(tombstones) > limit:
            return following.compacted()
        return following

    def compacted(self) -> SemanticIdTrie:
        """The same IDs and version with every update folded into a fresh base (O(N))."""
        if self.delta_size == 0:
            return self
        keys, rows = self._live_keys_and_rows()
        logger.debug("compacting trie version %d: %d IDs, delta %d", self._version, len(keys), self.delta_size)
        base = self._compact_layer(self._codec, keys, rows)
        empty = Layer.empty(self._codec)
        return SemanticIdTrie(self._codec, base, np.zeros(0, dtype=np.int64), empty, empty, self._version)

    def with_version(self, version: int) -> SemanticIdTrie:
        """The same IDs under another version number (a holder replacing its trie keeps versions increasing)."""
        return SemanticIdTrie(self._codec, self._base, self._tombstones, self._mid, self._tiny, version)

    # ---------------------------------------------------------------------------------- save, load

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this version (compacted) to one file that :meth:`load` can memory-map. Atomic."""
        trie = self.compacted()
        base = trie._base
        csr = base.csr
        arrays: dict[str, np.ndarray] = {"keys": base.keys, "rows": base.rows}
        for level in range(self.depth):
            arrays[f"child_offsets_{level}"] = csr.child_offsets[level]
            arrays[f"node_codes_{level}"] = csr.node_codes[level]
            bitmap = csr.bitmaps[level]
            if bitmap is not None:
                arrays[f"bitmap_{level}"] = bitmap
        arrays.update(base.row_index.arrays)
        header = {
            "codebook_sizes": list(self.codebook_sizes),
            "version": self._version,
            "num_ids": len(base),
            "search_steps": list(csr.search_steps),
        }
        write_arrays(path, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = True) -> SemanticIdTrie:
        """Read a file written by :meth:`save`; with ``mmap`` the arrays are mapped, not read (O(1) load)."""
        header, arrays = read_arrays(path, mmap=mmap)
        try:
            codec = KeyCodec(tuple(header["codebook_sizes"]))
            depth = codec.depth
            csr = Csr(
                child_offsets=tuple(arrays[f"child_offsets_{level}"] for level in range(depth)),
                node_codes=tuple(arrays[f"node_codes_{level}"] for level in range(depth)),
                bitmaps=tuple(arrays.get(f"bitmap_{level}") for level in range(depth)),
                search_steps=tuple(int(s) for s in header["search_steps"]),
            )
            row_index = (
                RowIndex(row_to_leaf=arrays["row_to_leaf"])
                if "row_to_leaf" in arrays
                else RowIndex(sorted_rows=arrays["sorted_rows"], leaves=arrays["sorted_row_leaves"])
            )
            keys, rows = arrays["keys"], arrays["rows"]
            version = int(header["version"])
        except KeyError as error:
            raise TrieFormatError(f"{path}: missing field or array {error}") from error
        if len(keys) != header["num_ids"] or len(rows) != len(keys) or len(csr.node_codes[-1]) != len(keys):
            raise TrieFormatError(f"{path}: array lengths disagree with num_ids {header['num_ids']}")
        base = Layer(codec, keys, rows, csr=csr, row_index=row_index)
        empty = Layer.empty(codec)
        return cls(codec, base, np.zeros(0, dtype=np.int64), empty, empty, version)
