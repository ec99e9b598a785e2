"""The live index: the bundle's documents, the added ones, and the trie of their semantic IDs.

Readers take ``LiveIndex.snapshot`` once per batch and see one consistent version (trie, documents,
version number); writers build a new snapshot and swap the reference, so reads never take a lock.

Updates are applied by ``LiveIndex.apply`` only, one at a time (the caller serialises them), in the
same order on every replica (the order of the Redis stream, or of the local writer). The semantic
ID of a new document is decided here, at apply time, from the learned codes computed by the writer:
the next free counter under the greedy prefix (or under the next most probable prefix when that
counter space is full). Given the same bundle and the same sequence of updates every replica
therefore assigns the same IDs, and the same index version names the same index everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bundle import DenseIndex, DocumentTable
from service.errors import ConflictError, IndexFullError
from service.store import DocumentStore, StoredDocument
from trie import CounterExhaustedError, SemanticIdTrie, next_free_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    """A document as the API returns it."""

    doc_id: str
    text: str
    metadata: dict[str, Any]
    semantic_id: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form used in responses and cache entries."""
        return {"doc_id": self.doc_id, "text": self.text, "metadata": self.metadata,
                "semantic_id": list(self.semantic_id)}


@dataclass(frozen=True)
class NewDocument:
    """One document of an update, with the learned codes the writer's indexer model chose."""

    doc_id: str
    text: str
    metadata: dict[str, Any]
    codes: tuple[int, ...]  # the greedy learned codes, levels 0..L-1
    alternatives: tuple[int, ...] = ()  # last-level codes by decreasing probability (fallback prefixes)
    vector: tuple[float, ...] = ()  # the text vector (float32 values); () when the bundle has no item vectors

    def as_dict(self) -> dict[str, Any]:
        """The JSON form carried by the Redis stream (the vector too: every replica stores the writer's)."""
        return {"doc_id": self.doc_id, "text": self.text, "metadata": self.metadata,
                "codes": list(self.codes), "alternatives": list(self.alternatives), "vector": list(self.vector)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NewDocument:
        """Inverse of ``as_dict``."""
        return cls(str(data["doc_id"]), str(data["text"]), dict(data.get("metadata") or {}),
                   tuple(int(c) for c in data["codes"]), tuple(int(c) for c in data.get("alternatives", ())),
                   tuple(float(v) for v in data.get("vector", ())))


@dataclass(frozen=True)
class IndexedDocument:
    """The outcome for one document of an update."""

    doc_id: str
    semantic_id: tuple[int, ...]
    status: str  # created | reindexed | unchanged | metadata_updated


@dataclass(frozen=True)
class UpdateOutcome:
    """The outcome of one update: every document's ID, or the error that rejected the whole batch."""

    documents: list[IndexedDocument]
    index_version: int
    error: str | None = None
    error_type: str | None = None  # index_full | conflict


@dataclass(frozen=True)
class IndexSnapshot:
    """One consistent version of the index. Never mutated: updates build a new one."""

    trie: SemanticIdTrie
    version: int
    bundle: DocumentTable
    added_by_row: dict[int, StoredDocument] = field(default_factory=dict)
    row_of_added: dict[str, int] = field(default_factory=dict)
    bundle_vectors: np.ndarray | None = None  # (N, D) float32 item vectors of the bundle's rows, or None
    dense: DenseIndex | None = None  # unit vectors of every row (added documents included), or None (hybrid search)

    def __len__(self) -> int:
        return len(self.trie)

    def row_of_doc_id(self, doc_id: str) -> int | None:
        """The trie row of a document, or None when unknown."""
        row = self.row_of_added.get(doc_id)
        return self.bundle.row_of_doc_id.get(doc_id) if row is None else row

    def document_at(self, row: int) -> Document | None:
        """The document at a trie row, or None."""
        added = self.added_by_row.get(row)
        if added is not None:
            return Document(added.doc_id, added.text, added.metadata, added.semantic_id)
        if 0 <= row < len(self.bundle):
            return Document(self.bundle.doc_ids[row], self.bundle.texts[row], self.bundle.metadata(row),
                            tuple(int(c) for c in self.bundle.semantic_ids[row]))
        return None

    def document(self, doc_id: str) -> Document | None:
        """A document by doc_id, or None."""
        row = self.row_of_doc_id(doc_id)
        return None if row is None else self.document_at(row)

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """The text vectors (n, D) float32 of trie rows (bundle_vectors, or the stored vector of an added or
        changed document). Zeros for a row without one (a document stored before the bundle had item vectors)."""
        assert self.bundle_vectors is not None, "the bundle has no item vectors"
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.zeros((len(rows), self.bundle_vectors.shape[1]), dtype=np.float32)
        in_bundle = (rows >= 0) & (rows < len(self.bundle_vectors))
        out[in_bundle] = self.bundle_vectors[rows[in_bundle]]
        if self.added_by_row:  # added or changed documents: their stored vector (a changed one overrides)
            for i, row in enumerate(rows.tolist()):
                added = self.added_by_row.get(row)
                if added is not None:
                    out[i] = added.vector if added.vector is not None else 0.0
        return out

    def text_of(self, doc_id: str) -> str | None:
        """The text of a document (the model input for recommendation), or None."""
        row = self.row_of_doc_id(doc_id)
        if row is None:
            return None
        added = self.added_by_row.get(row)
        return added.text if added is not None else self.bundle.texts[row]


class LiveIndex:
    """The mutable holder of the current ``IndexSnapshot``; ``apply`` is its only writer."""

    def __init__(self, bundle: DocumentTable, trie: SemanticIdTrie, store: DocumentStore,
                 bundle_vectors: np.ndarray | None = None) -> None:
        self._store = store
        state = store.load()
        self._next_row = max(state.next_row, len(bundle))
        self.last_stream_id = state.last_stream_id
        added_by_row = {d.row: d for d in state.documents}
        row_of_added = {d.doc_id: d.row for d in state.documents}
        # Replay: the bundle's IDs of documents changed since are removed, the stored IDs inserted.
        overridden = [row for row in added_by_row if row < len(bundle)]
        if overridden:
            old = bundle.semantic_ids[np.asarray(overridden, dtype=np.int64)]
            present = trie.rows_of(old) >= 0
            if present.any():
                trie = trie.with_removed(old[present])
        if state.documents:
            ids = np.asarray([d.semantic_id for d in state.documents], dtype=np.int64)
            rows = np.asarray([d.row for d in state.documents], dtype=np.int64)
            trie = trie.with_inserted(ids, rows)
        dense = None
        if bundle_vectors is not None:  # the dense index of hybrid search: the bundle's vectors, then the stored ones
            dense = _with_stored_vectors(DenseIndex.build(bundle_vectors), state.documents,
                                         int(bundle_vectors.shape[1]))
        self.snapshot = IndexSnapshot(trie, state.index_version, bundle, added_by_row, row_of_added, bundle_vectors,
                                      dense)
        logger.info("index loaded: %d bundle documents, %d added or changed, version %d",
                    len(bundle), len(state.documents), state.index_version)

    def unchanged(self, documents: list[tuple[str, str, dict[str, Any]]]) -> list[IndexedDocument] | None:
        """The outcome when every (doc_id, text, metadata) is already indexed as is, else None."""
        snapshot = self.snapshot
        out = []
        for doc_id, text, metadata in documents:
            existing = snapshot.document(doc_id)
            if existing is None or existing.text != text or existing.metadata != metadata:
                return None
            out.append(IndexedDocument(doc_id, existing.semantic_id, "unchanged"))
        return out

    @staticmethod
    def _vector_of(snapshot: IndexSnapshot, row: int) -> np.ndarray | None:
        """The stored text vector of a row (kept when only the metadata changes)."""
        if snapshot.bundle_vectors is None:
            return None
        return snapshot.vectors_of(np.asarray([row]))[0]

    @staticmethod
    def _free_id(trie: SemanticIdTrie, doc: NewDocument, taken: set[tuple[int, ...]]) -> tuple[int, ...]:
        """The document's ID by the counter rule (trie.next_free_id): greedy prefix + next free counter, else
        the next most probable prefix. ``taken``: the IDs given earlier in this update."""
        if not doc.codes:
            raise ConflictError(f"document {doc.doc_id!r} changed while this batch was being indexed; "
                                "retry the batch")
        try:
            return next_free_id(trie, doc.codes, doc.alternatives, taken)
        except CounterExhaustedError as exc:
            raise IndexFullError(f"no free semantic ID for document {doc.doc_id!r}: {exc}") from None

    def apply(self, documents: list[NewDocument], *, stream_id: str | None = None) -> UpdateOutcome:
        """Apply one update durably (one store transaction), then publish the new snapshot.

        All-or-nothing: when one document cannot get an ID the whole update is rejected (the outcome
        carries the error; with a ``stream_id`` the entry is still recorded as applied, so every
        replica skips it the same way). Blocking: run it in a worker thread, one at a time.
        """
        snapshot = self.snapshot
        trie = snapshot.trie
        outcomes: list[IndexedDocument] = []
        stored: list[StoredDocument] = []
        removed: list[tuple[int, ...]] = []
        inserted: list[tuple[int, ...]] = []
        inserted_rows: list[int] = []
        taken: set[tuple[int, ...]] = set()
        next_row = self._next_row
        try:
            for doc in documents:
                existing_row = snapshot.row_of_doc_id(doc.doc_id)
                existing = None if existing_row is None else snapshot.document_at(existing_row)
                if existing is not None and existing.text == doc.text:
                    status = "unchanged" if existing.metadata == doc.metadata else "metadata_updated"
                    if status == "metadata_updated":
                        stored.append(StoredDocument(doc.doc_id, existing_row, doc.text, doc.metadata,
                                                     existing.semantic_id, self._vector_of(snapshot, existing_row)))
                    outcomes.append(IndexedDocument(doc.doc_id, existing.semantic_id, status))
                    continue
                semantic_id = self._free_id(trie, doc, taken)
                taken.add(semantic_id)
                if existing is not None and existing_row is not None:
                    removed.append(existing.semantic_id)
                    taken.add(existing.semantic_id)  # not reused within the batch that frees it
                    row, status = existing_row, "reindexed"
                else:
                    row, status = next_row, "created"
                    next_row += 1
                inserted.append(semantic_id)
                inserted_rows.append(row)
                vector = np.asarray(doc.vector, dtype=np.float32) if doc.vector else None
                stored.append(StoredDocument(doc.doc_id, row, doc.text, doc.metadata, semantic_id, vector))
                outcomes.append(IndexedDocument(doc.doc_id, semantic_id, status))
        except (IndexFullError, ConflictError) as exc:
            if stream_id is not None:
                self._store.commit_update([], index_version=snapshot.version, next_row=self._next_row,
                                          last_stream_id=stream_id)
                self.last_stream_id = stream_id
            return UpdateOutcome([], snapshot.version, error=str(exc), error_type=exc.error_type)
        changed = bool(stored)
        version = snapshot.version + 1 if changed else snapshot.version
        new_trie = trie
        if removed:
            new_trie = new_trie.with_removed(np.asarray(removed, dtype=np.int64))
        if inserted:
            new_trie = new_trie.with_inserted(np.asarray(inserted, dtype=np.int64),
                                              np.asarray(inserted_rows, dtype=np.int64))
        # Durable first: the snapshot is published only after the commit, and the caller answers
        # the client only after this returns.
        self._store.commit_update(stored, index_version=version, next_row=next_row, last_stream_id=stream_id)
        if stream_id is not None:
            self.last_stream_id = stream_id
        if changed:
            added_by_row = dict(snapshot.added_by_row)
            row_of_added = dict(snapshot.row_of_added)
            for d in stored:
                added_by_row[d.row] = d
                row_of_added[d.doc_id] = d.row
            self._next_row = next_row
            dense = snapshot.dense
            if dense is not None:  # new and re-indexed documents (a metadata update keeps its vector)
                new_rows = set(inserted_rows)
                dense = _with_stored_vectors(dense, [d for d in stored if d.row in new_rows], dense.dim)
            self.snapshot = IndexSnapshot(new_trie, version, snapshot.bundle, added_by_row, row_of_added,
                                          snapshot.bundle_vectors, dense)
        return UpdateOutcome(outcomes, version)


def _with_stored_vectors(dense: DenseIndex, documents: list[StoredDocument], dim: int) -> DenseIndex:
    """``dense`` with the vectors of stored (added or changed) documents at their rows; a document stored
    without a vector (before the bundle had item vectors) has none there (never a dense candidate)."""
    if not documents:
        return dense
    rows = np.asarray([d.row for d in documents], dtype=np.int64)
    vectors = np.zeros((len(documents), dim), dtype=np.float32)
    for i, d in enumerate(documents):
        if d.vector is not None and len(d.vector) == dim:
            vectors[i] = d.vector
    return dense.with_rows(rows, vectors)
