"""The durable document store: SQLite in WAL mode, one file per replica.

It holds what the bundle does not: the documents added (or changed) through /index-documents, with
their semantic IDs, trie rows and (when the bundle has item vectors) text vectors (float32 bytes), plus
a few counters (index version, next free row, the last applied update of the Redis stream). Every
update is one transaction, committed before the client is answered; with ``synchronous=FULL`` the
WAL is fsynced at every commit (NORMAL survives kill -9, not a power loss).
A batch is all-or-nothing because it is one transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import BundleError
from service.settings import SyncMode

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id      TEXT PRIMARY KEY,
    row         INTEGER NOT NULL UNIQUE,
    text        TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    semantic_id TEXT NOT NULL,
    index_version INTEGER NOT NULL,
    vector      BLOB
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _another_bundle(path: Path, stored: str, fingerprint: str) -> str:
    return (f"{path} belongs to another bundle (fingerprint {stored}, this bundle {fingerprint}); its "
            "semantic IDs would be wrong here. Point LMINDEXER_STORE_PATH at a new file (and re-index the "
            "added documents), or serve the bundle it was made with")


@dataclass(frozen=True)
class StoredDocument:
    """A document added through /index-documents (or changed from the bundle's version)."""

    doc_id: str
    row: int
    text: str
    metadata: dict[str, Any]
    semantic_id: tuple[int, ...]
    vector: np.ndarray | None = None  # (D,) float32: its text vector; None when the bundle has no item vectors


@dataclass(frozen=True)
class StoreState:
    """Everything the store holds, read once at start to rebuild the live index."""

    documents: list[StoredDocument]
    index_version: int
    next_row: int
    last_stream_id: str | None


class DocumentStore:
    """SQLite (WAL) store of added documents. Thread-safe; call it from worker threads."""

    def __init__(self, path: Path, *, bundle_fingerprint: str, first_row: int, index_version: int,
                 synchronous: SyncMode = SyncMode.FULL) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is exactly one transaction.
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.value}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(documents)")}
        if "vector" not in columns:  # a store written before text vectors were kept
            self._db.execute("ALTER TABLE documents ADD COLUMN vector BLOB")
        stored = self._meta("bundle_fingerprint")
        if stored is None:
            self._write_meta({"bundle_fingerprint": bundle_fingerprint, "next_row": str(first_row),
                              "index_version": str(index_version)})
        elif stored != bundle_fingerprint:
            self._db.close()
            raise BundleError(_another_bundle(self.path, stored, bundle_fingerprint))

    @staticmethod
    def check_belongs_to(path: Path, bundle_fingerprint: str) -> None:
        """Raise BundleError when an existing store at ``path`` was made for another bundle."""
        if not Path(path).is_file():
            return
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'bundle_fingerprint'").fetchone()
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise BundleError(f"{path}: not a readable document store ({exc})") from None
        if row is not None and row[0] != bundle_fingerprint:
            raise BundleError(_another_bundle(Path(path), str(row[0]), bundle_fingerprint))

    def close(self) -> None:
        """Close the database (a checkpoint of the WAL happens on close)."""
        with self._lock:
            self._db.close()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _write_meta(self, values: dict[str, str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", values.items())
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def load(self) -> StoreState:
        """Every stored document (by row) and the counters."""
        with self._lock:
            rows = self._db.execute(
                "SELECT doc_id, row, text, metadata, semantic_id, vector FROM documents ORDER BY row").fetchall()
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        documents = [StoredDocument(doc_id, int(row), text, json.loads(metadata),
                                    tuple(int(c) for c in json.loads(semantic_id)),
                                    None if vector is None else np.frombuffer(vector, dtype=np.float32).copy())
                     for doc_id, row, text, metadata, semantic_id, vector in rows]
        return StoreState(documents=documents, index_version=int(meta["index_version"]),
                          next_row=int(meta["next_row"]), last_stream_id=meta.get("last_stream_id"))

    def commit_update(self, documents: Iterable[StoredDocument], *, index_version: int, next_row: int,
                      last_stream_id: str | None) -> None:
        """Write one update (a batch of documents and the new counters) as a single transaction."""
        values = [(d.doc_id, d.row, d.text, json.dumps(d.metadata, ensure_ascii=False),
                   json.dumps(list(d.semantic_id)), index_version,
                   None if d.vector is None else np.asarray(d.vector, dtype=np.float32).tobytes())
                  for d in documents]
        meta = {"index_version": str(index_version), "next_row": str(next_row)}
        if last_stream_id is not None:
            meta["last_stream_id"] = last_stream_id
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO documents(doc_id, row, text, metadata, semantic_id, index_version, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(doc_id) DO UPDATE SET row = excluded.row, "
                    "text = excluded.text, metadata = excluded.metadata, semantic_id = excluded.semantic_id, "
                    "index_version = excluded.index_version, vector = excluded.vector",
                    values)
                self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items())
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def check_writable(self) -> bool:
        """True when a write transaction can be opened (disk not read-only, file not locked)."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ROLLBACK")
            return True
        except sqlite3.Error:
            logger.warning("document store %s is not writable", self.path, exc_info=True)
            return False
