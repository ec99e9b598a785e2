"""The Redis-stream writer in process: apply order, timeouts, and catch-up from the stored stream id."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bundle import Bundle
from service.errors import NotReadyError
from service.index import LiveIndex, NewDocument
from service.redis_link import RedisLink
from service.replication import StreamWriter
from service.store import DocumentStore
from service.telemetry import Metrics
from trie import SemanticIdTrie


def _index(bundle_dir: Path, store_path: Path) -> LiveIndex:
    bundle = Bundle.open(bundle_dir)
    table = bundle.documents()
    store = DocumentStore(store_path, bundle_fingerprint=bundle.fingerprint, first_row=len(table),
                          index_version=0)
    return LiveIndex(table, SemanticIdTrie.load(bundle.trie_path), store)


def _writer(index: LiveIndex, redis_url: str, name: str, timeout_s: float = 5.0) -> StreamWriter:
    metrics = Metrics()
    link = RedisLink(redis_url, timeout_s=0.25, retry_interval_s=0.2, metrics=metrics)
    read_link = RedisLink(redis_url, timeout_s=0.25, retry_interval_s=0.2, metrics=metrics, extra_read_timeout_s=0.1)
    return StreamWriter(index, link=link, read_link=read_link, stream_key="lmindexer:test:updates", replica_id=name,
                        metrics=metrics, block_ms=100, write_timeout_s=timeout_s, retry_interval_s=0.2)


def test_unapplied_write_is_503_then_applied_and_replicas_agree(bundle_dir: Path, tmp_path: Path,
                                                                redis_url: str) -> None:
    a_index = _index(bundle_dir, tmp_path / "a.sqlite3")
    b_index = _index(bundle_dir, tmp_path / "b.sqlite3")
    doc = NewDocument("S1", "stream document", {}, (3, 3), (3, 4))

    async def scenario() -> None:
        a = _writer(a_index, redis_url, "a", timeout_s=0.3)  # its consumer is not started: nothing applies
        with pytest.raises(NotReadyError, match="retrying the batch is safe"):
            await a.write([doc])
        assert a_index.snapshot.document("S1") is None  # not acknowledged, not applied (yet)
        await a.start()
        b = _writer(b_index, redis_url, "b")
        await b.start()
        for _ in range(50):
            if a_index.snapshot.document("S1") and b_index.snapshot.document("S1"):
                break
            await asyncio.sleep(0.05)
        second = await b.write([NewDocument("S2", "another", {}, (3, 3), (3,))])
        assert second.error is None
        await asyncio.sleep(0.3)
        for name in ("S1", "S2"):
            assert a_index.snapshot.document(name) == b_index.snapshot.document(name)
        assert a_index.snapshot.version == b_index.snapshot.version
        assert a_index.last_stream_id == b_index.last_stream_id is not None
        await a.stop()
        await b.stop()

    asyncio.run(scenario())
    # A restarted replica resumes after the last applied entry: replay gives the same index, and the
    # consumer has nothing left to apply.
    reopened = _index(bundle_dir, tmp_path / "b.sqlite3")
    assert reopened.last_stream_id == b_index.last_stream_id
    assert reopened.snapshot.document("S2") == b_index.snapshot.document("S2")


def test_the_stream_carries_each_documents_text_vector_to_every_replica(bundle_dir: Path, tmp_path: Path,
                                                                       redis_url: str) -> None:
    import numpy as np

    from bundle import read_item_vectors

    bundle = Bundle.open(bundle_dir)
    vectors = read_item_vectors(bundle)

    def index(name: str) -> LiveIndex:
        table = bundle.documents()
        store = DocumentStore(tmp_path / f"{name}.sqlite3", bundle_fingerprint=bundle.fingerprint,
                              first_row=len(table), index_version=0)
        return LiveIndex(table, SemanticIdTrie.load(bundle.trie_path), store, vectors)

    a_index, b_index = index("a"), index("b")
    vector = tuple(float(v) for v in np.linspace(-1.0, 1.0, vectors.shape[1], dtype=np.float32))

    async def scenario() -> None:
        a, b = _writer(a_index, redis_url, "a"), _writer(b_index, redis_url, "b")
        await a.start()
        await b.start()
        outcome = await a.write([NewDocument("V1", "a vector document", {}, (3, 3), (3, 4), vector)])
        assert outcome.error is None
        for _ in range(50):
            if b_index.snapshot.document("V1"):
                break
            await asyncio.sleep(0.05)
        await a.stop()
        await b.stop()

    asyncio.run(scenario())
    for replica in (a_index, b_index):
        row = replica.snapshot.row_of_doc_id("V1")
        assert row is not None
        np.testing.assert_array_equal(replica.snapshot.vectors_of(np.asarray([row]))[0], np.asarray(vector))
    # durable in b's store: a restart reads it back
    np.testing.assert_array_equal(index("b").snapshot.vectors_of(np.asarray([row]))[0], np.asarray(vector))
    # a bundle row reads the bundle's vector
    np.testing.assert_array_equal(b_index.snapshot.vectors_of(np.asarray([5]))[0], vectors[5])
