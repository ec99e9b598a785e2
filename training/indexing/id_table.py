"""The ID table: learned codes plus the collision counter, `doc_id <-> semantic ID`.

The collision counter is the last level of every semantic ID. Rule (stable and deterministic):
a document's counter is its 0-based occurrence index, *in document order*, among the documents
with the same learned codes. Documents whose codes are unique get 0. The same codes for the same
documents in the same order therefore always give the same IDs, and appending documents to the
end of a corpus never changes the IDs of earlier ones (the official code's `add_final_id` rule,
kept because it is stable under appends).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import DataFormatError


@dataclass(frozen=True)
class IdTable:
    """Semantic IDs of a corpus, in document order.

    doc_ids: the documents' keys, length N.
    semantic_ids: (N, L + 1) int64; columns 0..L-1 the learned codes, column L the counter.
    counter_size: the largest counter + 1 (the counter level's vocabulary size).
    """

    doc_ids: tuple[str, ...]
    semantic_ids: np.ndarray

    @property
    def counter_size(self) -> int:
        return int(self.semantic_ids[:, -1].max()) + 1 if len(self.semantic_ids) else 0

    def id_of(self, doc_id: str) -> tuple[int, ...]:
        """The semantic ID of one document."""
        return tuple(int(c) for c in self.semantic_ids[self._row_of[doc_id]])

    def doc_of(self, semantic_id: Sequence[int]) -> str:
        """The document holding a semantic ID (KeyError when none does)."""
        return self._doc_of[tuple(int(c) for c in semantic_id)]

    @property
    def _row_of(self) -> dict[str, int]:
        cache = self.__dict__.get("_row_cache")
        if cache is None:
            cache = {d: i for i, d in enumerate(self.doc_ids)}
            object.__setattr__(self, "_row_cache", cache)
        return cache

    @property
    def _doc_of(self) -> dict[tuple[int, ...], str]:
        cache = self.__dict__.get("_doc_cache")
        if cache is None:
            rows = zip(self.doc_ids, self.semantic_ids, strict=True)
            cache = {tuple(int(c) for c in row): d for d, row in rows}
            object.__setattr__(self, "_doc_cache", cache)
        return cache


def collision_counter(codes: np.ndarray) -> np.ndarray:
    """(N,) int64: occurrence index of each row among earlier rows with identical codes.

    codes: (N, L) integer codes. Vectorised: a stable sort groups equal rows while keeping
    document order inside each group, so rank-within-group is the occurrence index.
    """
    codes = np.asarray(codes, dtype=np.int64)
    n = codes.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Group ids of unique rows; np.unique on rows is O(N log N) and exact.
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # equal groups stay in document order
    sorted_group = group[order]
    starts = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
    start_index = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    counter = np.empty(n, dtype=np.int64)
    counter[order] = np.arange(n) - start_index
    return counter


def assign_semantic_ids(codes: np.ndarray, doc_ids: Sequence[str]) -> IdTable:
    """Append the collision counter to `codes` (N, L) and check that every ID is unique."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[0] != len(doc_ids):
        raise ValueError(f"codes {codes.shape} do not match {len(doc_ids)} documents")
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("doc_ids are not unique")
    semantic_ids = np.concatenate([codes, collision_counter(codes)[:, None]], axis=1)
    if len(np.unique(semantic_ids, axis=0)) != len(semantic_ids):  # cannot happen; guards the rule
        raise AssertionError("semantic IDs are not unique after the collision counter")
    return IdTable(tuple(doc_ids), semantic_ids)


def write_ids_jsonl(path: Path, doc_ids: Iterable[str], semantic_ids: np.ndarray) -> None:
    """One `{"doc_id": ..., "semantic_id": [c1, ..., counter]}` a line, written atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for doc_id, row in zip(doc_ids, semantic_ids, strict=True):
            handle.write(json.dumps({"doc_id": doc_id, "semantic_id": [int(c) for c in row]}) + "\n")
    tmp.replace(path)


def read_ids_jsonl(path: Path) -> IdTable:
    """Read an `ids.jsonl` back; malformed lines raise DataFormatError with the line number."""
    path = Path(path)
    doc_ids: list[str] = []
    rows: list[list[int]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                doc_id = record["doc_id"]
                semantic_id = [int(c) for c in record["semantic_id"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DataFormatError(path, f"not an ID record ({exc})", number) from None
            if rows and len(semantic_id) != len(rows[0]):
                message = f"semantic_id has {len(semantic_id)} levels, expected {len(rows[0])}"
                raise DataFormatError(path, message, number)
            doc_ids.append(str(doc_id))
            rows.append(semantic_id)
    if not rows:
        raise DataFormatError(path, "no IDs")
    return IdTable(tuple(doc_ids), np.asarray(rows, dtype=np.int64))
