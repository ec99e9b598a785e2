"""Crash test: kill -9 during a stream of /index-documents; every acknowledged document survives."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from bundle import Bundle
from service.index import LiveIndex
from service.store import DocumentStore
from tests.service.processes import RedisServer, ServiceProcess
from tests.service.tiny_bundle import service_test_bundle
from trie import SemanticIdTrie

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 5


def _stream_batches(url: str, acknowledged: dict[str, list[int]], attempted: list[list[str]],
                    stop: threading.Event) -> None:
    """Send batches one after another until the service dies; record what was acknowledged."""
    client = httpx.Client(base_url=url, timeout=5)
    number = 0
    while not stop.is_set():
        docs = [{"doc_id": f"C{number:05d}-{j}", "text": f"crash test batch {number} document {j} "
                 f"{'lavender' if j % 2 else 'charcoal'} serum"} for j in range(BATCH)]
        attempted.append([d["doc_id"] for d in docs])
        try:
            response = client.post("/index-documents", json={"documents": docs})
        except httpx.HTTPError:
            return  # the service is gone: this batch was not acknowledged
        if response.status_code == 200:
            for d in response.json()["documents"]:
                acknowledged[d["doc_id"]] = d["semantic_id"]
        number += 1


def _check_after_restart(bundle_dir: Path, store: Path, service: ServiceProcess,
                         acknowledged: dict[str, list[int]], attempted: list[list[str]]) -> None:
    client = httpx.Client(base_url=service.url, timeout=10)
    for doc_id, semantic_id in acknowledged.items():
        response = client.get(f"/documents/{doc_id}")
        assert response.status_code == 200, doc_id
        assert response.json()["semantic_id"] == semantic_id
    # None half-written: every attempted batch is wholly present or wholly absent.
    for batch in attempted:
        present = [client.get(f"/documents/{d}").status_code == 200 for d in batch]
        assert all(present) or not any(present), batch
    # Searchable: every acknowledged ID is in the replayed trie, at its document's row.
    service.stop()
    bundle = Bundle.open(bundle_dir)
    table = bundle.documents()
    index = LiveIndex(table, SemanticIdTrie.load(bundle.trie_path),
                      DocumentStore(store, bundle_fingerprint=bundle.fingerprint, first_row=len(table),
                                    index_version=0))
    for doc_id, semantic_id in acknowledged.items():
        row = index.snapshot.trie.row_of(tuple(semantic_id))
        assert row is not None and index.snapshot.document_at(row).doc_id == doc_id  # type: ignore[union-attr]


@pytest.mark.parametrize("with_redis", [False, True], ids=["local", "redis-stream"])
def test_kill_9_during_indexing_loses_no_acknowledged_document(tmp_path: Path, with_redis: bool) -> None:
    if with_redis and not RedisServer.available():
        pytest.skip("redis-server not installed (Debian's package `redis-server`; .ci/prepare installs it)")
    bundle_dir = service_test_bundle()
    store = tmp_path / "store.sqlite3"
    private = RedisServer(tmp_path / "redis").start() if with_redis else None
    redis_url = private.url if private else None
    try:
        service = ServiceProcess(bundle_dir, store, redis_url=redis_url).start()
        acknowledged: dict[str, list[int]] = {}
        attempted: list[list[str]] = []
        stop = threading.Event()
        writer = threading.Thread(target=_stream_batches, args=(service.url, acknowledged, attempted, stop))
        writer.start()
        time.sleep(2.0)
        service.kill()  # kill -9 mid-stream
        stop.set()
        writer.join(10)
        assert len(acknowledged) >= 2 * BATCH, "the stream was too short to mean anything"
        restarted = ServiceProcess(bundle_dir, store, redis_url=redis_url, port=service.port).start()
        try:
            _check_after_restart(bundle_dir, store, restarted, acknowledged, attempted)
        finally:
            restarted.stop()
    finally:
        if private:
            private.stop()
