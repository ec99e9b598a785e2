"""The real service (uvicorn in a subprocess) against the machine's real Redis.

Which bundle each test serves, and why:

- ``test_search_recommend_index_and_restart``: the trained demo bundle (``demo_bundle`` fixture:
  ``lmindexer build-demo --preset integration``, i.e. training.downstream.demo with LMIndexer IDs, a
  fine-tuned retriever and recommender and the ONNX export with its parity check; built once per version
  of its sources and cached under .cache/, see tests/integration/demo_bundle.py). It checks what the
  models answer: a document indexed through the API is found by a query about it, before and after a
  restart, which a random model cannot do.
- ``test_redis_stopped_mid_test_searches_stay_200`` and ``test_schemathesis_finds_no_server_error``: the
  same demo bundle (the issue asks for the real service with a demo bundle). They check availability and
  the HTTP contract (schemathesis: no 5xx, responses as the OpenAPI document says, strict JSON with the
  request id, for bodies carrying lone surrogates, control characters and NaN; issues 13 and 14), not
  rankings; the demo's models answer in tens of milliseconds, so schemathesis's time-boxed run (40 s)
  sends fewer requests than it would against the tiny random bundle.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from bundle import Bundle
from service.index import LiveIndex
from service.store import DocumentStore
from tests.service.processes import RedisServer, ServiceProcess
from trie import SemanticIdTrie

pytestmark = [pytest.mark.integration, pytest.mark.slow]

logger = logging.getLogger(__name__)

TEST_REDIS_URL = "redis://127.0.0.1:6379/13"
# The demo's three MiniLM models load in seconds and answer in tens of milliseconds; generous for a
# loaded 2-core machine.
START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 30

# A product that is not in the demo bundle (its 600 most popular Beauty items), written in the corpus's
# template (training.data.amazon.item_text: title, brand, category path), as a client would add it.
NEW_DOCUMENT = {
    "doc_id": "NEW-SUNSCREEN-1",
    "text": "title: Neutrogena Ultra Sheer Dry-Touch Sunscreen Lotion SPF 55, 3 Fl Oz, brand: Neutrogena, "
            "category: Beauty, Skin Care, Sun, Skin Protection",
    "metadata": {"price": 9.97},
}
# A query about it as a shopper would type it: its key words, not a substring of its text.
NEW_DOCUMENT_QUERY = "neutrogena sunscreen spf 55"
# k = 20, the service's default beam width (a larger k would widen the beam). The new document gets the
# indexer's greedy prefix and the next free counter under it, so it competes at the counter level with the
# documents already under that prefix (up to ~12 here), and the retriever need not rank that prefix first.
# Measured on 150 Beauty items outside this bundle, each indexed and then searched by its title: 85% are in
# the top 20, 69% in the top 10. 20 is still 3% of the 601 documents, so a hit is not chance.
SEMANTIC_K = 20


@pytest.fixture
def machine_redis() -> Iterator[str]:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379 (.ci/prepare starts one)")
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


def _reopen_index(bundle_dir: Path, store_path: Path) -> LiveIndex:
    bundle = Bundle.open(bundle_dir)
    table = bundle.documents()
    store = DocumentStore(store_path, bundle_fingerprint=bundle.fingerprint, first_row=len(table),
                          index_version=bundle.manifest.index_version)
    return LiveIndex(table, SemanticIdTrie.load(bundle.trie_path), store)


def _ranked(response: httpx.Response) -> list[tuple[str, tuple[int, ...]]]:
    assert response.status_code == 200, response.text
    return [(hit["doc_id"], tuple(hit["semantic_id"])) for hit in response.json()["results"]]


def test_search_recommend_index_and_restart(demo_bundle: Path, tmp_path: Path, machine_redis: str) -> None:
    documents = Bundle.open(demo_bundle).documents()
    bundle_doc_ids = documents.doc_ids
    assert NEW_DOCUMENT["doc_id"] not in bundle_doc_ids and NEW_DOCUMENT["text"] not in documents.texts
    assert NEW_DOCUMENT_QUERY not in NEW_DOCUMENT["text"]
    store = tmp_path / "store.sqlite3"
    service = ServiceProcess(demo_bundle, store, redis_url=machine_redis).start(timeout_s=START_TIMEOUT_S)
    try:
        client = httpx.Client(base_url=service.url, timeout=REQUEST_TIMEOUT_S)
        first = client.post("/search", json={"query": "organic argan oil shampoo", "k": 5})
        assert first.status_code == 200 and len(first.json()["results"]) == 5
        assert first.json()["cached"] is False
        again = client.post("/search", json={"query": "organic argan oil shampoo", "k": 5})
        assert again.json()["cached"] is True and again.json()["results"] == first.json()["results"]
        history = bundle_doc_ids[3:5]
        recommended = client.post("/recommend", json={"history": history, "k": 5})
        assert recommended.status_code == 200 and len(recommended.json()["results"]) == 5
        assert not {hit["doc_id"] for hit in recommended.json()["results"]} - set(bundle_doc_ids)

        # generative: the retriever's own decoding (hybrid search would also find it by its text vector)
        query = {"query": NEW_DOCUMENT_QUERY, "k": SEMANTIC_K, "mode": "generative"}
        not_yet = _ranked(client.post("/search", json=query))
        assert len(not_yet) == SEMANTIC_K and NEW_DOCUMENT["doc_id"] not in dict(not_yet)

        before = client.get("/info").json()
        indexed = client.post("/index-documents", json={"documents": [NEW_DOCUMENT]})
        assert indexed.status_code == 200, indexed.text
        assert indexed.json()["documents"][0]["status"] == "created"
        semantic_id = tuple(indexed.json()["documents"][0]["semantic_id"])
        assert client.get(f"/documents/{NEW_DOCUMENT['doc_id']}").json()["semantic_id"] == list(semantic_id)
        after = client.get("/info").json()
        assert after["num_documents"] == before["num_documents"] + 1
        assert after["index_version"] == before["index_version"] + 1
        # A new index version: the cached answer is not served again.
        assert client.post("/search", json={"query": "organic argan oil shampoo", "k": 5}).json()["cached"] is False

        # The semantic check: the retriever decodes the query to the new document's ID (the indexer's codes).
        found = client.post("/search", json=query)
        assert found.json()["cached"] is False
        ranked = _ranked(found)
        assert (NEW_DOCUMENT["doc_id"], semantic_id) in ranked, (
            f"{NEW_DOCUMENT['doc_id']} {list(semantic_id)} not in the top {SEMANTIC_K} for {NEW_DOCUMENT_QUERY!r}: "
            f"{ranked}")
        rank = [doc_id for doc_id, _ in ranked].index(NEW_DOCUMENT["doc_id"]) + 1
        logger.info("%s found at rank %d of %d for %r", NEW_DOCUMENT["doc_id"], rank, SEMANTIC_K, NEW_DOCUMENT_QUERY)
    finally:
        service.stop()
    # Durable and in the trie: the store replays it, and its ID maps to its row.
    index = _reopen_index(demo_bundle, store)
    row = index.snapshot.trie.row_of(semantic_id)
    assert row is not None and index.snapshot.document_at(row).doc_id == NEW_DOCUMENT["doc_id"]  # type: ignore[union-attr]
    index._store.close()
    # Forget the cached answers, so the search after the restart is decoded again over the replayed trie.
    redis.Redis.from_url(machine_redis).flushdb()
    restarted = ServiceProcess(demo_bundle, store, redis_url=machine_redis).start(timeout_s=START_TIMEOUT_S)
    try:
        client = httpx.Client(base_url=restarted.url, timeout=REQUEST_TIMEOUT_S)
        stored = client.get(f"/documents/{NEW_DOCUMENT['doc_id']}")
        assert stored.status_code == 200 and stored.json()["semantic_id"] == list(semantic_id)
        assert client.get("/info").json()["index_version"] == after["index_version"]
        found_again = client.post("/search", json=query)
        assert found_again.json()["cached"] is False
        # Same bundle, same replayed index: the same answer, the new document at the same rank.
        assert _ranked(found_again) == ranked
    finally:
        restarted.stop()


def test_redis_stopped_mid_test_searches_stay_200(demo_bundle: Path, tmp_path: Path) -> None:
    if not RedisServer.available():
        pytest.skip("redis-server not installed (Debian's package `redis-server`; .ci/prepare installs it)")
    private = RedisServer(tmp_path / "redis").start()
    service = ServiceProcess(demo_bundle, tmp_path / "store.sqlite3", redis_url=private.url).start(
        timeout_s=START_TIMEOUT_S)
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
            time.sleep(0.1)
        assert retried.status_code == 200, retried.text
        assert client.get("/readyz").json()["redis"] == "up"
    finally:
        service.stop()
        private.stop()


# The checks: no 5xx, and every response as the OpenAPI document says (status code, body schema, content
# type, headers), plus strict JSON with the request id (schemathesis_hooks.py). The hooks also rewrite
# the generated bodies to carry lone surrogates, control characters and NaN / Infinity (issue 14).
SCHEMATHESIS_CHECKS = ("not_a_server_error,status_code_conformance,response_schema_conformance,"
                       "content_type_conformance,response_headers_conformance,strict_json_with_request_id")
SCHEMATHESIS_HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


def test_schemathesis_finds_no_server_error(demo_bundle: Path, tmp_path: Path) -> None:
    with ServiceProcess(demo_bundle, tmp_path / "store.sqlite3",
                        env={"LMINDEXER_MAX_BATCH_DOCUMENTS": "20"}) as service:
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{service.url}/openapi.json",
             "--checks", SCHEMATHESIS_CHECKS, "--max-examples", "30", "--seed", "1", "--workers", "1",
             "--phases", "examples,coverage,fuzzing", "--generation-deterministic", "--max-time", "40"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": str(SCHEMATHESIS_HOOKS)})
        log = service.log_tail(20)
    # (A hooks file that fails to load, or an unknown check name, is an error exit too.)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:] + log
