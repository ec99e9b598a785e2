"""The real service (uvicorn in a subprocess) with the tiny bundle, against real Redis.

The lead switches ``bundle_dir`` to the demo bundle (lmindexer build-demo) and adds the semantic
check (a new document found by a query about it), which a random tiny model cannot pass.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.bundle import load_documents, load_manifest
from service.index import LiveIndex
from service.store import DocumentStore
from tests.service.processes import RedisServer, ServiceProcess
from tests.service.tiny_bundle import service_test_bundle
from trie import SemanticIdTrie

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEST_REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture(scope="module")
def bundle_dir() -> Path:
    """The served bundle (one line to switch to the demo bundle)."""
    return service_test_bundle()


@pytest.fixture
def machine_redis() -> Iterator[str]:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


def _reopen_index(bundle_dir: Path, store_path: Path) -> LiveIndex:
    manifest = load_manifest(bundle_dir)
    table = load_documents(manifest)
    store = DocumentStore(store_path, bundle_fingerprint=manifest.fingerprint, first_row=len(table),
                          index_version=manifest.index_version)
    return LiveIndex(table, SemanticIdTrie.load(manifest.trie), store, counter_size=manifest.codebook_sizes[-1])


def test_search_recommend_index_and_restart(bundle_dir: Path, tmp_path: Path, machine_redis: str) -> None:
    store = tmp_path / "store.sqlite3"
    service = ServiceProcess(bundle_dir, store, redis_url=machine_redis).start()
    try:
        client = httpx.Client(base_url=service.url, timeout=10)
        first = client.post("/search", json={"query": "organic argan oil shampoo", "k": 5})
        assert first.status_code == 200 and len(first.json()["results"]) == 5
        assert first.json()["cached"] is False
        again = client.post("/search", json={"query": "organic argan oil shampoo", "k": 5})
        assert again.json()["cached"] is True and again.json()["results"] == first.json()["results"]
        history = load_documents(load_manifest(bundle_dir)).doc_ids[3:5]  # any bundle's documents
        recommended = client.post("/recommend", json={"history": history, "k": 5})
        assert recommended.status_code == 200 and len(recommended.json()["results"]) == 5

        before = client.get("/info").json()
        doc = {"doc_id": "NEW-1", "text": "title: sea salt texturizing spray, brand: tide, category: hair"}
        indexed = client.post("/index-documents", json={"documents": [doc]})
        assert indexed.status_code == 200, indexed.text
        semantic_id = indexed.json()["documents"][0]["semantic_id"]
        assert client.get("/documents/NEW-1").json()["semantic_id"] == semantic_id
        after = client.get("/info").json()
        assert after["num_documents"] == before["num_documents"] + 1
        assert after["index_version"] == before["index_version"] + 1
        # A new index version: the cached answer is not served again.
        assert client.post("/search", json={"query": "organic argan oil shampoo", "k": 5}).json()["cached"] is False
    finally:
        service.stop()
    # Durable and in the trie: the store replays it, and its ID maps to its row.
    index = _reopen_index(bundle_dir, store)
    row = index.snapshot.trie.row_of(tuple(semantic_id))
    assert row is not None and index.snapshot.document_at(row).doc_id == "NEW-1"  # type: ignore[union-attr]
    index._store.close()
    with ServiceProcess(bundle_dir, store, redis_url=machine_redis) as restarted:
        found = httpx.get(f"{restarted.url}/documents/NEW-1", timeout=10)
        assert found.status_code == 200 and found.json()["semantic_id"] == semantic_id
        assert httpx.get(f"{restarted.url}/info").json()["index_version"] == after["index_version"]


def test_redis_stopped_mid_test_searches_stay_200(bundle_dir: Path, tmp_path: Path) -> None:
    if not RedisServer.available():
        pytest.skip("redis-server not installed")
    private = RedisServer(tmp_path / "redis").start()
    service = ServiceProcess(bundle_dir, tmp_path / "store.sqlite3", redis_url=private.url).start()
    try:
        client = httpx.Client(base_url=service.url, timeout=10)
        assert client.post("/search", json={"query": "warm the cache"}).status_code == 200
        ok = client.post("/index-documents", json={"documents": [{"doc_id": "R1", "text": "before the outage"}]})
        assert ok.status_code == 200
        private.kill()
        for i in range(20):
            response = client.post("/search", json={"query": f"during the outage {i}", "k": 3})
            assert response.status_code == 200, response.text
        assert client.post("/search", json={"query": "warm the cache"}).status_code == 200
        assert client.get("/documents/R1").status_code == 200
        assert client.post("/recommend", json={"history": ["R1"]}).status_code == 200
        refused = client.post("/index-documents", json={"documents": [{"doc_id": "R2", "text": "in the outage"}]})
        assert refused.status_code == 503 and refused.json()["error_type"] == "unavailable"
        assert "retry-after" in refused.headers
        assert client.get("/documents/R2").status_code == 404  # refused means not written
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["redis"] == "down"
        metrics = client.get("/metrics").text
        assert 'lmindexer_cache_lookups_total{kind="result",result="error"}' in metrics
        private.start()
        for _ in range(50):  # the link retries every redis_retry_interval_s (0.5 s)
            retried = client.post("/index-documents", json={"documents": [{"doc_id": "R2", "text": "after"}]})
            if retried.status_code == 200:
                break
            __import__("time").sleep(0.1)
        assert retried.status_code == 200, retried.text
        assert client.get("/readyz").json()["redis"] == "up"
    finally:
        service.stop()
        private.stop()


def test_schemathesis_finds_no_server_error(bundle_dir: Path, tmp_path: Path) -> None:
    with ServiceProcess(bundle_dir, tmp_path / "store.sqlite3",
                        env={"LMINDEXER_MAX_BATCH_DOCUMENTS": "20"}) as service:
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{service.url}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "30", "--seed", "1", "--workers", "1",
             "--phases", "examples,coverage,fuzzing", "--generation-deterministic", "--max-time", "40"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path)
        log = service.log_tail(20)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:] + log
