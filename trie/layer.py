"""One immutable, compact layer of a trie: sorted packed keys plus per-level CSR arrays.

Layout (``D`` levels, ``n_d`` nodes at depth ``d``; depth 0 is the root, depth ``D`` the leaves, and
leaf ``i`` is the ID ``keys[i]``):

- ``keys`` ``(n,)`` int64, sorted, unique: the packed IDs (see :mod:`trie.keys`).
- ``rows`` ``(n,)`` int32/int64: the document row of each leaf.
- ``child_offsets[d]`` ``(n_d + 1,)``: the children of depth-``d`` node ``i`` are the depth-``d+1`` nodes
  ``child_offsets[d][i] : child_offsets[d][i + 1]``: a contiguous slice, so a beam's whole state is one
  node index and its allowed codes are one slice.
- ``node_codes[d]`` ``(n_{d+1},)`` uint8/16/32: the level-``d`` code of each depth-``d+1`` node, sorted
  within each parent's slice (nodes are numbered in lexicographic order at every depth).
- ``bitmaps[d]`` ``(n_d, ceil(K_d / 8))`` uint8 or ``None``: the allowed level-``d`` codes of each
  depth-``d`` node as a little-endian bitset. Kept only where it is cheap (few, wide nodes: the top
  levels), where it turns a mask into one gather plus ``np.unpackbits`` instead of a scatter of
  ``n_beams * K`` codes.

No Python object per node: a 1M-ID layer is a dozen numpy arrays (about 23 bytes per ID).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trie.keys import KeyCodec

#: A level gets a bitmap when it costs at most this many bytes per child node (plus a small floor).
BITMAP_BYTES_PER_CHILD = 4
BITMAP_FLOOR_BYTES = 1 << 16
#: Set bits of every byte value (np.bitwise_count needs numpy >= 2; the project supports 1.26).
POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def smallest_uint(max_value: int) -> np.dtype:
    """The narrowest unsigned dtype holding ``0..max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def index_dtype(max_value: int) -> np.dtype:
    """int32 when it holds ``max_value`` (halves the memory of offsets and rows), else int64."""
    return np.dtype(np.int32) if max_value <= np.iinfo(np.int32).max else np.dtype(np.int64)


@dataclass(frozen=True, eq=False)
class Csr:
    """The per-level node arrays of a layer (see the module docstring)."""

    child_offsets: tuple[np.ndarray, ...]
    node_codes: tuple[np.ndarray, ...]
    bitmaps: tuple[np.ndarray | None, ...]
    #: ``search_steps[d]``: binary-search iterations that always find a code among a depth-d node's children.
    search_steps: tuple[int, ...]

    @classmethod
    def build(cls, keys: np.ndarray, codec: KeyCodec) -> Csr:
        """Vectorised build from sorted unique keys ``(n,)``: O(n) numpy work per level, no Python loop per node."""
        n = len(keys)
        depth = codec.depth
        offsets_dtype = index_dtype(n)
        child_offsets: list[np.ndarray] = []
        node_codes: list[np.ndarray] = []
        bitmaps: list[np.ndarray | None] = []
        steps: list[int] = []
        parent_of_leaf = np.zeros(n, dtype=np.int64)  # the depth-d ancestor of every leaf; depth 0: the root
        num_parents = 1
        for level in range(depth):
            if level + 1 < depth:
                prefixes = keys >> codec.prefix_shifts[level + 1]
                is_first = np.empty(n, dtype=bool)
                if n:
                    is_first[0] = True
                    np.not_equal(prefixes[1:], prefixes[:-1], out=is_first[1:])
                first_leaf = np.flatnonzero(is_first)
            else:
                prefixes = keys
                first_leaf = np.arange(n)
            size = codec.codebook_sizes[level]
            codes = (prefixes[first_leaf] & codec.code_mask(level)).astype(smallest_uint(size - 1))
            parents = parent_of_leaf[first_leaf]
            counts = np.bincount(parents, minlength=num_parents)
            offsets = np.zeros(num_parents + 1, dtype=offsets_dtype)
            np.cumsum(counts, out=offsets[1:])
            child_offsets.append(offsets)
            node_codes.append(codes)
            steps.append(int(counts.max()).bit_length() if num_parents else 0)
            bitmap_bytes = num_parents * ((size + 7) // 8)
            if bitmap_bytes <= BITMAP_BYTES_PER_CHILD * len(codes) + BITMAP_FLOOR_BYTES:
                dense = np.zeros((num_parents, (size + 7) // 8 * 8), dtype=bool)
                dense[parents, codes] = True
                bitmaps.append(np.packbits(dense, axis=1, bitorder="little"))
            else:
                bitmaps.append(None)
            if level + 1 < depth:
                parent_of_leaf = np.cumsum(is_first) - 1
            num_parents = len(first_leaf)
        return cls(tuple(child_offsets), tuple(node_codes), tuple(bitmaps), tuple(steps))

    def mask(self, nodes: np.ndarray, depth: int, size: int) -> np.ndarray:
        """Allowed next codes of depth-``depth`` nodes ``(M,)`` (-1: none) as bool ``(M, size)``."""
        present = nodes >= 0
        safe = np.where(present, nodes, 0)
        bitmap = self.bitmaps[depth]
        if bitmap is not None:
            mask = np.unpackbits(bitmap[safe], axis=1, count=size, bitorder="little").view(bool)
            if not present.all():
                mask[~present] = False
            return mask
        offsets = self.child_offsets[depth]
        starts = offsets[safe].astype(np.int64)
        counts = np.where(present, offsets[safe + 1] - starts, 0)
        mask = np.zeros((len(nodes), size), dtype=bool)
        total = int(counts.sum())
        if total:
            # Flat child indices of all beams at once: arange over the concatenated slices, shifted back
            # to each slice's start (no Python loop per beam).
            ends = np.cumsum(counts)
            children = np.arange(total) + np.repeat(starts - (ends - counts), counts)
            mask[np.repeat(np.arange(len(nodes)), counts), self.node_codes[depth][children]] = True
        return mask

    def child(self, nodes: np.ndarray, depth: int, codes: np.ndarray) -> np.ndarray:
        """The depth-``depth+1`` child with level-``depth`` code ``codes`` of each node ``(M,)``, -1 where absent.

        A vectorised binary search inside each node's (sorted) child slice.
        """
        present = nodes >= 0
        safe = np.where(present, nodes, 0)
        offsets = self.child_offsets[depth]
        bitmap = self.bitmaps[depth]
        if bitmap is not None:
            # Rank in the bitset: the child's index is the parent's first child plus the number of
            # allowed codes below ``codes`` (a popcount), with no search loop.
            bits = bitmap[safe]
            byte = codes >> 3
            counts = POPCOUNT[bits]
            below = np.cumsum(counts, axis=1, dtype=np.int64) - counts
            rows = np.arange(len(nodes))
            own = bits[rows, byte]
            rank = below[rows, byte] + POPCOUNT[own & ((1 << (codes & 7)) - 1).astype(np.uint8)]
            found = present & ((own >> (codes & 7)) & 1).astype(bool)
            return np.where(found, offsets[safe].astype(np.int64) + rank, -1)
        level_codes = self.node_codes[depth]
        low = offsets[safe].astype(np.int64)
        end = np.where(present, offsets[safe + 1], low).astype(np.int64)
        high = end.copy()
        if len(level_codes) == 0:
            return np.full(len(nodes), -1, dtype=np.int64)
        last = len(level_codes) - 1
        for _ in range(self.search_steps[depth]):
            middle = (low + high) >> 1
            below = level_codes[np.minimum(middle, last)] < codes
            active = low < high
            low = np.where(active & below, middle + 1, low)
            high = np.where(active & ~below, middle, high)
        found = (low < end) & (level_codes[np.minimum(low, last)] == codes)
        return np.where(found, low, -1)


class RowIndex:
    """Document row -> leaf. Dense (one int per row) when rows are dense, else sorted rows + their leaves."""

    __slots__ = ("_leaves", "_row_to_leaf", "_sorted_rows")

    def __init__(
        self,
        row_to_leaf: np.ndarray | None = None,
        sorted_rows: np.ndarray | None = None,
        leaves: np.ndarray | None = None,
    ) -> None:
        self._row_to_leaf = row_to_leaf
        self._sorted_rows = sorted_rows
        self._leaves = leaves

    @classmethod
    def build(cls, rows: np.ndarray) -> RowIndex:
        """Index ``rows`` ``(n,)`` (unique, >= 0)."""
        n = len(rows)
        max_row = int(rows.max()) if n else -1
        if max_row < 2 * n + 1024:
            row_to_leaf = np.full(max_row + 1, -1, dtype=index_dtype(n))
            row_to_leaf[rows] = np.arange(n)
            return cls(row_to_leaf=row_to_leaf)
        order = np.argsort(rows, kind="stable")
        return cls(sorted_rows=rows[order].astype(np.int64), leaves=order)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save, by name."""
        if self._row_to_leaf is not None:
            return {"row_to_leaf": self._row_to_leaf}
        assert self._sorted_rows is not None and self._leaves is not None
        return {"sorted_rows": self._sorted_rows, "sorted_row_leaves": self._leaves}

    def leaf_of(self, row: int) -> int:
        """Leaf of one row, -1 where it holds no ID (scalar fast path of :meth:`leaves_of`)."""
        if self._row_to_leaf is not None:
            return int(self._row_to_leaf[row]) if 0 <= row < len(self._row_to_leaf) else -1
        assert self._sorted_rows is not None and self._leaves is not None
        position = int(self._sorted_rows.searchsorted(row))
        if position < len(self._sorted_rows) and int(self._sorted_rows[position]) == row:
            return int(self._leaves[position])
        return -1

    def leaves_of(self, rows: np.ndarray) -> np.ndarray:
        """Leaf of each row ``(M,)`` int64, -1 where the row holds no ID."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._row_to_leaf is not None:
            table = self._row_to_leaf
            inside = (rows >= 0) & (rows < len(table))
            return np.where(inside, table[np.where(inside, rows, 0)] if len(table) else -1, -1).astype(np.int64)
        assert self._sorted_rows is not None and self._leaves is not None
        sorted_rows = self._sorted_rows
        if len(sorted_rows) == 0:
            return np.full(len(rows), -1, dtype=np.int64)
        position = np.minimum(np.searchsorted(sorted_rows, rows), len(sorted_rows) - 1)
        return np.where(sorted_rows[position] == rows, self._leaves[position], -1).astype(np.int64)


class Layer:
    """An immutable set of (ID, row) pairs: sorted keys, rows, and lazily the CSR and row index.

    The base layer of a trie builds its CSR eagerly (or maps it from a file); the small delta layers
    build theirs on first use, so an insert never pays for it.
    """

    __slots__ = ("_csr", "_row_index", "_sorted_rows", "codec", "keys", "rows")

    def __init__(
        self,
        codec: KeyCodec,
        keys: np.ndarray,
        rows: np.ndarray,
        csr: Csr | None = None,
        row_index: RowIndex | None = None,
        sorted_rows: np.ndarray | None = None,
    ) -> None:
        self.codec = codec
        self.keys = keys
        self.rows = rows
        self._csr = csr
        self._row_index = row_index
        self._sorted_rows = sorted_rows

    @classmethod
    def empty(cls, codec: KeyCodec) -> Layer:
        return cls(codec, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def csr(self) -> Csr:
        """The node arrays, built on first use (a benign race: two threads may both build; one wins)."""
        csr = self._csr
        if csr is None:
            csr = Csr.build(self.keys, self.codec)
            self._csr = csr
        return csr

    @property
    def row_index(self) -> RowIndex:
        index = self._row_index
        if index is None:
            index = RowIndex.build(self.rows)
            self._row_index = index
        return index

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Leaf index of each key ``(M,)``, -1 where absent."""
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        position = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[position] == keys, position, -1)

    def find_one(self, key: int) -> int:
        """Leaf index of one key, -1 where absent (scalar fast path of :meth:`find`)."""
        keys = self.keys
        if len(keys) == 0:
            return -1
        position = int(keys.searchsorted(key))
        return position if position < len(keys) and int(keys[position]) == key else -1

    def with_one(self, key: int, row: int) -> Layer:
        """A new layer with one more (absent) key: an O(n) copy of a small layer."""
        size = len(self.keys)
        position = int(self.keys.searchsorted(key))
        keys = np.empty(size + 1, dtype=np.int64)
        rows = np.empty(size + 1, dtype=np.int64)
        keys[:position] = self.keys[:position]
        keys[position] = key
        keys[position + 1 :] = self.keys[position:]
        rows[:position] = self.rows[:position]
        rows[position] = row
        rows[position + 1 :] = self.rows[position:]
        return Layer(self.codec, keys, rows)

    @property
    def sorted_rows(self) -> np.ndarray:
        """This layer's rows, sorted (lazily; merged layers inherit it by an O(n) merge, not a sort)."""
        sorted_rows = self._sorted_rows
        if sorted_rows is None:
            sorted_rows = np.sort(self.rows)
            self._sorted_rows = sorted_rows
        return sorted_rows

    def holds_row(self, row: int) -> bool:
        """Whether one of this layer's IDs sits at document ``row``."""
        if self._row_index is not None:
            return self._row_index.leaf_of(row) >= 0
        if len(self.rows) <= 512:  # a scan of a small array beats building any index
            return bool((self.rows == row).any())
        sorted_rows = self.sorted_rows
        position = int(sorted_rows.searchsorted(row))
        return position < len(sorted_rows) and int(sorted_rows[position]) == row

    def merged(self, keys: np.ndarray, rows: np.ndarray) -> Layer:
        """A new layer with sorted ``keys`` (disjoint from this layer's) and their ``rows`` added. O(n) copy."""
        if len(self.keys) == 0:
            return Layer(self.codec, keys, rows)
        total = len(self.keys) + len(keys)
        # Where each new key lands in the merged order; the old keys fill the remaining slots.
        new_slots = np.searchsorted(self.keys, keys) + np.arange(len(keys))
        is_old = np.ones(total, dtype=bool)
        is_old[new_slots] = False
        merged_keys = np.empty(total, dtype=np.int64)
        merged_rows = np.empty(total, dtype=np.int64)
        merged_keys[new_slots] = keys
        merged_rows[new_slots] = rows
        merged_keys[is_old] = self.keys
        merged_rows[is_old] = self.rows
        new_rows = np.sort(rows)
        sorted_rows = np.insert(self.sorted_rows, np.searchsorted(self.sorted_rows, new_rows), new_rows)
        return Layer(self.codec, merged_keys, merged_rows, sorted_rows=sorted_rows)

    def without(self, leaves: np.ndarray) -> Layer:
        """A new layer without the given leaves."""
        return Layer(self.codec, np.delete(self.keys, leaves), np.delete(self.rows, leaves))
