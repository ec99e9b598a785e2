"""Semantic IDs as packed ``int64`` keys, and the validation of every ID that enters the package.

A semantic ID ``(c_0, ..., c_{D-1})`` (``D = L + 1`` levels, the last one the collision counter) is
packed into one non-negative ``int64``: level ``t`` owns ``bits[t] = ceil(log2(K_t))`` bits, level 0
the most significant. Sorting the keys therefore sorts the IDs lexicographically, and every prefix
of length ``d`` is ``key >> prefix_shifts[d]``: the IDs under a prefix are one contiguous run of the
sorted keys. This module is the only place with that bit arithmetic.

>>> codec = KeyCodec((4, 4, 2))
>>> codec.bits, codec.prefix_shifts
((2, 2, 1), (5, 3, 1, 0))
>>> keys = codec.pack(np.array([[1, 2, 0], [3, 0, 1]]))
>>> keys.tolist(), codec.unpack(keys).tolist()
([12, 25], [[1, 2, 0], [3, 0, 1]])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trie.errors import InvalidSemanticIdError, TrieError

#: Keys must stay below 2**62 so that ``(prefix + 1) << shift`` (an exclusive upper bound) cannot overflow.
MAX_KEY_BITS = 62


def _format_ids(ids: np.ndarray, limit: int = 20) -> str:
    shown = ", ".join(str(tuple(int(c) for c in row)) for row in ids[:limit])
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return shown + more


@dataclass(frozen=True)
class KeyCodec:
    """Pack and unpack semantic IDs of fixed shape ``codebook_sizes`` into ``int64`` keys."""

    codebook_sizes: tuple[int, ...]
    bits: tuple[int, ...] = field(init=False)
    #: ``prefix_shifts[d]``: right shift that turns a key into its prefix of length ``d`` (``0..D``).
    prefix_shifts: tuple[int, ...] = field(init=False)
    _sizes: np.ndarray = field(init=False, repr=False, compare=False)
    _shifts: np.ndarray = field(init=False, repr=False, compare=False)
    _masks: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = tuple(int(size) for size in self.codebook_sizes)
        if not sizes:
            raise TrieError("codebook_sizes must name at least one level")
        if any(size < 1 for size in sizes):
            raise TrieError(f"every codebook size must be >= 1, got {list(sizes)}")
        bits = tuple(max(1, (size - 1).bit_length()) for size in sizes)
        if sum(bits) > MAX_KEY_BITS:
            raise TrieError(
                f"codebook_sizes {list(sizes)} need {sum(bits)} bits per ID; at most {MAX_KEY_BITS} are supported"
            )
        shifts = tuple(sum(bits[depth:]) for depth in range(len(bits) + 1))
        object.__setattr__(self, "codebook_sizes", sizes)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "prefix_shifts", shifts)
        object.__setattr__(self, "_sizes", np.array(sizes, dtype=np.int64))
        object.__setattr__(self, "_shifts", np.array(shifts[1:], dtype=np.int64))
        object.__setattr__(self, "_masks", np.array([(1 << b) - 1 for b in bits], dtype=np.int64))

    @property
    def depth(self) -> int:
        """Codes per semantic ID (``L + 1``)."""
        return len(self.codebook_sizes)

    def code_mask(self, level: int) -> int:
        """Bit mask of one level's code once shifted down to bit 0."""
        return (1 << self.bits[level]) - 1

    def validate(self, ids: object, width: int | None = None, what: str = "semantic IDs") -> np.ndarray:
        """Check ``ids`` and return them as a C-contiguous ``(M, width)`` int64 array.

        ``width`` defaults to the full depth; a smaller width validates prefixes (levels ``0..width-1``).
        Raises :class:`InvalidSemanticIdError` naming the first bad row, level and code.
        """
        width = self.depth if width is None else width
        array = np.asarray(ids)
        if array.size == 0 and array.ndim <= 2 and (array.ndim < 2 or array.shape[1] in (0, width)):
            # [] or (0, width) or, for width 0, (M, 0): empty prefixes of M beams.
            return np.zeros((array.shape[0] if array.ndim == 2 and width == 0 else 0, width), dtype=np.int64)
        if array.dtype.kind not in "iu":  # bool, float, object, str ...: never silently truncated
            raise InvalidSemanticIdError(f"{what} must be integers, got dtype {array.dtype}")
        if array.ndim != 2 or array.shape[1] != width:
            raise InvalidSemanticIdError(
                f"{what} must have shape (M, {width}): {width} codes each "
                f"(codebook_sizes {list(self.codebook_sizes[:width])}), got shape {array.shape}"
            )
        if array.dtype == np.uint64 and (array > np.iinfo(np.int64).max).any():
            raise InvalidSemanticIdError(f"{what} hold codes too large for int64")
        array = np.ascontiguousarray(array, dtype=np.int64)
        bad = (array < 0) | (array >= self._sizes[:width])
        if bad.any():  # the slow, friendly message only on failure
            rows, levels = np.nonzero(bad)
            row, level = int(rows[0]), int(levels[0])
            raise InvalidSemanticIdError(
                f"{len(np.unique(rows))} of {len(array)} {what} have a code out of range; first: "
                f"{tuple(int(c) for c in array[row])} (row {row}) has code {int(array[row, level])} at "
                f"level {level}, valid codes are 0..{self.codebook_sizes[level] - 1}"
            )
        return array

    def pack(self, ids: np.ndarray) -> np.ndarray:
        """Pack validated full IDs ``(M, D)`` into keys ``(M,)`` int64 (lexicographic order preserved)."""
        return np.left_shift(ids, self._shifts).sum(axis=1, dtype=np.int64)

    def pack_prefixes(self, prefixes: np.ndarray) -> np.ndarray:
        """Pack validated prefixes ``(M, d)`` into ``(M,)`` values comparable with ``key >> prefix_shifts[d]``."""
        width = prefixes.shape[1]
        if width == 0:
            return np.zeros(len(prefixes), dtype=np.int64)
        shifts = self._shifts[:width] - self.prefix_shifts[width]
        return np.left_shift(prefixes, shifts).sum(axis=1, dtype=np.int64)

    def unpack(self, keys: np.ndarray) -> np.ndarray:
        """Unpack keys ``(M,)`` into IDs ``(M, D)`` int64."""
        return np.right_shift(np.asarray(keys, dtype=np.int64)[:, None], self._shifts) & self._masks

    def format_ids(self, ids: np.ndarray, limit: int = 20) -> str:
        """IDs as a readable list for error messages (the first ``limit``)."""
        return _format_ids(ids, limit)
