"""The HTTP API in-process (TestClient over the real app and the tiny bundle): shapes and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import OverloadedError
from service.settings import ServiceSettings

API_KEY = "test-key-123"


def _client(bundle_dir: Path, store: Path, **settings: object) -> TestClient:
    return TestClient(create_app(ServiceSettings(bundle_dir=bundle_dir, store_path=store, log_json=False,
                                                 **settings)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    with _client(bundle_dir, store, max_batch_documents=5, max_body_bytes=64 * 1024) as c:
        yield c


@pytest.fixture(scope="module")
def keyed_client(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    with _client(bundle_dir, store, api_key=API_KEY) as c:
        yield c


def _assert_error(response, status: int, error_type: str, mentions: str = "") -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type", "request_id", "details"}
    assert body["error_type"] == error_type
    assert body["request_id"] == response.headers["x-request-id"]
    assert mentions.lower() in body["error"].lower() + json.dumps(body["details"]).lower()
    return body


def test_search_returns_k_valid_results(client: TestClient) -> None:
    response = client.post("/search", json={"query": "vegan lavender serum", "k": 7})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"results", "index_version", "took_ms", "cached", "warnings"}
    assert len(body["results"]) == 7 and body["cached"] is False
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)
    for hit in body["results"]:
        document = client.get(f"/documents/{hit['doc_id']}").json()
        assert document["semantic_id"] == hit["semantic_id"]  # every ID exists in the index
        assert hit["document"]["text"] == document["text"]


def test_search_is_deterministic_and_ignores_whitespace(client: TestClient) -> None:
    a = client.post("/search", json={"query": "matte  red\tlipstick", "k": 5}).json()["results"]
    b = client.post("/search", json={"query": " matte red lipstick ", "k": 5}).json()["results"]
    assert [h["doc_id"] for h in a] == [h["doc_id"] for h in b]


def test_recommend_with_history_and_history_texts(client: TestClient) -> None:
    by_ids = client.post("/recommend", json={"history": ["D000001", "D000002"], "k": 4})
    assert by_ids.status_code == 200 and len(by_ids.json()["results"]) == 4
    texts = [client.get(f"/documents/{d}").json()["text"] for d in ("D000001", "D000002")]
    by_texts = client.post("/recommend", json={"history_texts": texts, "k": 4})
    assert by_texts.status_code == 200 and len(by_texts.json()["results"]) == 4
    # Texts become items as new documents would (same vectors, IDs by the counter rule): the history's own
    # documents are not known as such, so only the doc_id request excludes them.
    assert not {"D000001", "D000002"} & {h["doc_id"] for h in by_ids.json()["results"]}


def test_recommend_skips_unknown_history_items_with_a_warning(client: TestClient) -> None:
    response = client.post("/recommend", json={"history": ["D000001", "NOPE-1"], "k": 3})
    assert response.status_code == 200
    assert "NOPE-1" in response.json()["warnings"][0]
    same = client.post("/recommend", json={"history": ["D000001"], "k": 3}).json()
    assert [h["doc_id"] for h in response.json()["results"]] == [h["doc_id"] for h in same["results"]]


def test_recommend_with_no_known_item_is_404_naming_them(client: TestClient) -> None:
    _assert_error(client.post("/recommend", json={"history": ["NOPE-1", "NOPE-2"]}), 404, "not_found", "NOPE-2")


@pytest.mark.parametrize("payload, mentions", [
    ({"k": 3}, "query"),  # missing field
    ({"query": ""}, "query"),
    ({"query": "   \n\t"}, "whitespace"),
    ({"query": "x" * 2001}, "2000"),
    ({"query": "q", "k": 0}, "k"),
    ({"query": "q", "k": 101}, "k"),
    ({"query": "q", "k": "ten"}, "k"),
    ({"query": 12}, "query"),
    ({"query": "q", "top_k": 5}, "top_k"),  # unknown field
])
def test_bad_search_requests_are_422_naming_the_problem(client: TestClient, payload: dict, mentions: str) -> None:
    _assert_error(client.post("/search", json=payload), 422, "validation_error", mentions)


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post("/search", content=b'{"query": "x",', headers={"content-type": "application/json"})
    _assert_error(response, 422, "validation_error", "not valid json")


@pytest.mark.parametrize("payload, mentions", [
    ({"history": []}, "empty"),
    ({}, "exactly one"),
    ({"history": ["D000001"], "history_texts": ["x"]}, "exactly one"),
    ({"history_texts": ["  "]}, "empty"),
    ({"history": [1, 2]}, "history"),
    ({"history": ["D000001"], "mode": "dense"}, "dense"),
    ({"history": ["D000001"], "mode": "Hybrid"}, "mode"),
])
def test_bad_recommend_requests_are_422(client: TestClient, payload: dict, mentions: str) -> None:
    _assert_error(client.post("/recommend", json=payload), 422, "validation_error", mentions)


@pytest.mark.parametrize("documents, status, mentions", [
    ([], 422, "documents"),
    ([{"doc_id": "a", "text": 5}], 422, "text"),
    ([{"doc_id": "a"}], 422, "text"),
    ([{"doc_id": "a", "text": "   "}], 422, "text"),
    ([{"doc_id": "a", "text": "x"}, {"doc_id": "a", "text": "y"}], 422, "duplicate"),
    ([{"doc_id": f"d{i}", "text": "x"} for i in range(6)], 413, "limit"),
])
def test_bad_batches_are_rejected_and_write_nothing(client: TestClient, documents: list, status: int,
                                                    mentions: str) -> None:
    before = client.get("/info").json()
    error_type = "payload_too_large" if status == 413 else "validation_error"
    _assert_error(client.post("/index-documents", json={"documents": documents}), status, error_type, mentions)
    after = client.get("/info").json()
    assert (after["num_documents"], after["index_version"]) == (before["num_documents"], before["index_version"])
    assert client.get("/documents/a").status_code == 404


def test_over_large_body_is_413(client: TestClient) -> None:
    big = {"documents": [{"doc_id": "big", "text": "x" * 70_000}]}
    _assert_error(client.post("/index-documents", json=big), 413, "payload_too_large")


def test_over_large_chunked_body_is_413(client: TestClient) -> None:
    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"documents": [{"doc_id": "big", "text": "'
        for _ in range(80):
            yield b"x" * 1000
        yield b'"}]}'

    response = client.post("/index-documents", content=chunks(), headers={"content-type": "application/json"})
    _assert_error(response, 413, "payload_too_large")


def test_unknown_document_is_404(client: TestClient) -> None:
    _assert_error(client.get("/documents/does-not-exist"), 404, "not_found", "does-not-exist")


def test_unknown_route_uses_the_same_error_shape(client: TestClient) -> None:
    _assert_error(client.get("/nowhere"), 404, "not_found")


def test_index_documents_is_idempotent_and_reindexes_changed_text(client: TestClient) -> None:
    doc = {"doc_id": "new-1", "text": "a brand new rose serum", "metadata": {"brand": "x"}}
    first = client.post("/index-documents", json={"documents": [doc]})
    assert first.status_code == 200, first.text
    created = first.json()["documents"][0]
    assert created["status"] == "created" and len(created["semantic_id"]) == 3
    again = client.post("/index-documents", json={"documents": [doc]}).json()
    assert again["documents"][0] == {**created, "status": "unchanged"}
    assert again["index_version"] == first.json()["index_version"]
    stored = client.get("/documents/new-1").json()
    assert stored == {"doc_id": "new-1", "text": doc["text"], "metadata": {"brand": "x"},
                      "semantic_id": created["semantic_id"]}
    changed = client.post("/index-documents", json={"documents": [{**doc, "text": "now a lavender toner"}]})
    assert changed.json()["documents"][0]["status"] == "reindexed"
    assert changed.json()["index_version"] == first.json()["index_version"] + 1


def test_indexer_gives_a_bundle_text_the_bundle_documents_learned_codes(client: TestClient) -> None:
    bundle_doc = client.get("/documents/D000010").json()
    response = client.post("/index-documents", json={"documents": [{"doc_id": "copy-10", "text": bundle_doc["text"]}]})
    assert response.json()["documents"][0]["semantic_id"][:2] == bundle_doc["semantic_id"][:2]


def test_writes_need_the_api_key_when_set(keyed_client: TestClient) -> None:
    body = {"documents": [{"doc_id": "k1", "text": "keyed"}]}
    _assert_error(keyed_client.post("/index-documents", json=body), 401, "unauthorized")
    _assert_error(keyed_client.post("/index-documents", json=body, headers={"X-API-Key": "wrong"}),
                  401, "unauthorized")
    assert keyed_client.get("/documents/k1").status_code == 404
    ok = keyed_client.post("/index-documents", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    assert keyed_client.post("/search", json={"query": "reads stay open"}).status_code == 200


def test_overload_becomes_429_with_retry_after(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    async def overloaded(query: str, k: int, mode: str | None = None) -> None:
        raise OverloadedError("too many queued retriever requests")

    monkeypatch.setattr(client.app.state.components.engine, "search", overloaded)  # type: ignore[attr-defined]
    response = client.post("/search", json={"query": "q"})
    _assert_error(response, 429, "overloaded", "too many")
    assert response.headers["retry-after"] == "1"


def test_ops_endpoints(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["store_writable"] is True
    assert ready.json()["redis"] == "not configured"
    info = client.get("/info").json()
    assert info["manifest"]["format_version"] == 5 and info["num_documents"] >= 300
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("lmindexer_requests_total", "lmindexer_request_duration_seconds", "lmindexer_queue_wait_seconds",
                 "lmindexer_inference_duration_seconds", "lmindexer_batch_size",
                 "lmindexer_beam_search_duration_seconds",
                 "lmindexer_cache_lookups_total", "lmindexer_redis_errors_total", "lmindexer_documents_indexed_total",
                 "lmindexer_index_documents", "lmindexer_index_version", "lmindexer_invalid_ids_total",
                 "lmindexer_queue_depth", "lmindexer_search_queries_total",
                 "lmindexer_hybrid_search_duration_seconds"):
        assert name in metrics.text, name
    assert 'lmindexer_requests_total{endpoint="/documents/{doc_id}"' in metrics.text  # templates, not ids
    assert 'lmindexer_invalid_ids_total{model="retriever"} 0.0' in metrics.text


def test_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
