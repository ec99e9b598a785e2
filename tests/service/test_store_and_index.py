"""The SQLite store and the live index: durability, replay, ID assignment, all-or-nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from bundle import Bundle
from service.errors import BundleError
from service.index import LiveIndex, NewDocument
from service.settings import SyncMode
from service.store import DocumentStore, StoredDocument
from trie import SemanticIdTrie


def _open(bundle_dir: Path, store_path: Path) -> LiveIndex:
    bundle = Bundle.open(bundle_dir)
    table = bundle.documents()
    store = DocumentStore(store_path, bundle_fingerprint=bundle.fingerprint, first_row=len(table),
                          index_version=bundle.manifest.index_version)
    return LiveIndex(table, SemanticIdTrie.load(bundle.trie_path), store)


def test_store_is_wal_with_full_sync_and_reloads_commits(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path / "s.sqlite3", bundle_fingerprint="f", first_row=10, index_version=0,
                          synchronous=SyncMode.FULL)
    store.commit_update([StoredDocument("a", 10, "text a", {"x": 1}, (1, 2, 0))], index_version=1, next_row=11,
                        last_stream_id="5-0")
    store.close()
    db = sqlite3.connect(tmp_path / "s.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    state = DocumentStore(tmp_path / "s.sqlite3", bundle_fingerprint="f", first_row=10, index_version=0).load()
    assert state.documents == [StoredDocument("a", 10, "text a", {"x": 1}, (1, 2, 0))]
    assert (state.index_version, state.next_row, state.last_stream_id) == (1, 11, "5-0")


def test_store_of_another_bundle_is_refused(tmp_path: Path) -> None:
    DocumentStore(tmp_path / "s.sqlite3", bundle_fingerprint="one", first_row=0, index_version=0).close()
    with pytest.raises(BundleError, match="another bundle"):
        DocumentStore(tmp_path / "s.sqlite3", bundle_fingerprint="two", first_row=0, index_version=0)
    with pytest.raises(BundleError, match="another bundle"):  # the CLI's check before uvicorn starts
        DocumentStore.check_belongs_to(tmp_path / "s.sqlite3", "two")
    DocumentStore.check_belongs_to(tmp_path / "s.sqlite3", "one")
    DocumentStore.check_belongs_to(tmp_path / "missing.sqlite3", "two")


def _new(doc_id: str, text: str, codes: tuple[int, ...], alternatives: tuple[int, ...] = ()) -> NewDocument:
    return NewDocument(doc_id, text, {}, codes, alternatives)


def test_apply_assigns_next_free_counters_and_survives_reopen(bundle_dir: Path, tmp_path: Path) -> None:
    index = _open(bundle_dir, tmp_path / "s.sqlite3")
    version = index.snapshot.version
    free = np.flatnonzero(~index.snapshot.trie.allowed_mask(np.array([[3, 4]]))[0])
    outcome = index.apply([_new("n1", "one", (3, 4)), _new("n2", "two", (3, 4))])
    assert outcome.error is None and outcome.index_version == version + 1
    ids = [d.semantic_id for d in outcome.documents]
    assert ids == [(3, 4, int(free[0])), (3, 4, int(free[1]))]  # distinct counters within one batch
    assert all(d.status == "created" for d in outcome.documents)
    for d in outcome.documents:
        assert index.snapshot.trie.row_of(d.semantic_id) == index.snapshot.row_of_doc_id(d.doc_id)
    reopened = _open(bundle_dir, tmp_path / "s.sqlite3")
    assert reopened.snapshot.version == version + 1
    for d in outcome.documents:
        assert reopened.snapshot.document(d.doc_id).semantic_id == d.semantic_id  # type: ignore[union-attr]
        assert reopened.snapshot.trie.row_of(d.semantic_id) is not None


def test_same_text_keeps_its_id_and_changed_text_reindexes(bundle_dir: Path, tmp_path: Path) -> None:
    index = _open(bundle_dir, tmp_path / "s.sqlite3")
    first = index.apply([_new("n1", "one", (1, 1))]).documents[0]
    again = index.apply([_new("n1", "one", (9, 9))])
    assert again.documents[0].status == "unchanged" and again.documents[0].semantic_id == first.semantic_id
    assert again.index_version == index.snapshot.version  # nothing changed, no new version
    changed = index.apply([_new("n1", "one, edited", (2, 2))]).documents[0]
    assert changed.status == "reindexed" and changed.semantic_id[:2] == (2, 2)
    assert index.snapshot.trie.row_of(first.semantic_id) is None  # the old ID is gone
    assert index.snapshot.document("n1").text == "one, edited"  # type: ignore[union-attr]
    reopened = _open(bundle_dir, tmp_path / "s.sqlite3")
    assert reopened.snapshot.trie.row_of(first.semantic_id) is None
    assert reopened.snapshot.trie.row_of(changed.semantic_id) is not None


def test_changing_a_bundle_document_replaces_its_bundle_id(bundle_dir: Path, tmp_path: Path) -> None:
    index = _open(bundle_dir, tmp_path / "s.sqlite3")
    original = index.snapshot.document("D000000")
    assert original is not None
    outcome = index.apply([_new("D000000", "completely new text", (5, 5))])
    assert outcome.documents[0].status == "reindexed"
    reopened = _open(bundle_dir, tmp_path / "s.sqlite3")
    assert reopened.snapshot.trie.row_of(original.semantic_id) is None
    assert len(reopened.snapshot) == len(reopened.snapshot.bundle)  # replaced, not added
    assert reopened.snapshot.document("D000000").text == "completely new text"  # type: ignore[union-attr]


def test_full_prefix_falls_back_to_the_next_probable_prefix(bundle_dir: Path, tmp_path: Path) -> None:
    index = _open(bundle_dir, tmp_path / "s.sqlite3")
    counter_size = index.snapshot.trie.codebook_sizes[-1]
    free = counter_size - int(index.snapshot.trie.allowed_mask(np.array([[7, 7]]))[0].sum())
    filler = [_new(f"f{i}", f"filler {i}", (7, 7)) for i in range(free)]
    index.apply(filler)
    outcome = index.apply([_new("late", "late", (7, 7), alternatives=(7, 3))])
    assert outcome.error is None and outcome.documents[0].semantic_id[:2] == (7, 3)


def test_a_batch_with_one_impossible_document_writes_nothing(bundle_dir: Path, tmp_path: Path) -> None:
    index = _open(bundle_dir, tmp_path / "s.sqlite3")
    counter_size = index.snapshot.trie.codebook_sizes[-1]
    free = counter_size - int(index.snapshot.trie.allowed_mask(np.array([[6, 6]]))[0].sum())
    index.apply([_new(f"f{i}", f"filler {i}", (6, 6)) for i in range(free)])
    before = (index.snapshot.version, len(index.snapshot))
    outcome = index.apply([_new("ok", "fine", (1, 2)), _new("full", "no room", (6, 6), alternatives=(6,))])
    assert outcome.error is not None and outcome.error_type == "index_full"
    assert (index.snapshot.version, len(index.snapshot)) == before
    assert index.snapshot.document("ok") is None
    assert _open(bundle_dir, tmp_path / "s.sqlite3").snapshot.document("ok") is None
