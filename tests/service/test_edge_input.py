"""Issue 14: bad input never becomes a 500, invalid JSON or an unreachable document.

The three cases of the issue as written (lone surrogates, NaN metadata, a doc_id with '/'), then
generated variants over every endpoint and field (hypothesis), the doc_id round trip (a property test
against a real uvicorn server), the response encoders (strict JSON for any metadata), and unhandled
errors (a 500 with its request id, on a keep-alive connection that stays usable).
"""

from __future__ import annotations

import http.client
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.app import create_app, error_body
from service.engine import ModelRanker
from service.schemas import (
    MAX_METADATA_DEPTH,
    TEXT_PATTERN,
    DocumentBody,
    DocumentResponse,
    IndexDocumentsRequest,
    RecommendRequest,
    SearchHit,
    SearchRequest,
    SearchResponse,
    encode_document,
    encode_hits,
    encode_json,
    encode_search_response,
    text_error,
)
from service.settings import ServiceSettings
from service.telemetry import Metrics
from tests.service.processes import free_port

JSON_HEADERS = {"content-type": "application/json"}


def strict_json(body: bytes) -> Any:
    """Parse as a strict client (a browser's JSON.parse) does: UTF-8, and no NaN or Infinity."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(body.decode("utf-8"), parse_constant=refuse)


def _assert_422(response: Any, loc: list[str], position: int | None = None) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    body = strict_json(response.content)
    assert body["error_type"] == "validation_error"
    assert body["request_id"] == response.headers["x-request-id"]
    first = body["details"][0]
    assert first["loc"] == loc, body
    assert ".".join(loc[1:]) in body["error"]  # the message names the field too
    if position is not None:
        assert first["position"] == position, body
        assert f"position {position}" in first["msg"]
    return body


@pytest.fixture(scope="module")
def client(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    app = create_app(ServiceSettings(bundle_dir=bundle_dir, store_path=store, log_json=False))  # type: ignore[call-arg]
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# --- the cases as written ---------------------------------------------------------------------

def test_case_1_lone_surrogate_in_search_query_is_422_naming_query_and_position(client: TestClient) -> None:
    response = client.post("/search", content=b'{"query": "lip balm \\ud83d", "k": 3}', headers=JSON_HEADERS)
    body = _assert_422(response, ["body", "query"], position=9)
    assert "surrogate" in body["details"][0]["msg"]


def test_case_1_lone_surrogate_in_history_texts_is_422(client: TestClient) -> None:
    response = client.post("/recommend", content=b'{"history_texts": ["red lipstick", "rose \\udc00 oil"], "k": 3}',
                           headers=JSON_HEADERS)
    _assert_422(response, ["body", "history_texts", "1"], position=5)


def test_case_1_the_same_strings_are_refused_by_index_documents_with_the_position(client: TestClient) -> None:
    response = client.post("/index-documents", headers=JSON_HEADERS,
                           content=b'{"documents": [{"doc_id": "S-1", "text": "lip balm \\ud83d"}]}')
    _assert_422(response, ["body", "documents", "0", "text"], position=9)


def test_a_body_that_is_not_utf8_is_422_with_the_byte_position(client: TestClient) -> None:
    response = client.post("/search", content=b'{"query": "ab\xffc"}', headers=JSON_HEADERS)
    assert response.status_code == 422 and "not valid JSON" in response.json()["error"]
    assert response.json()["details"][0]["position"] == 13


def test_a_surrogate_encoded_as_utf8_bytes_is_refused_like_its_escape(client: TestClient) -> None:
    # b"\xed\xa0\xbd" is U+D83D in UTF-8 form, which Python's JSON parser decodes ('surrogatepass').
    response = client.post("/search", content=b'{"query": "ab\xed\xa0\xbdc"}', headers=JSON_HEADERS)
    _assert_422(response, ["body", "query"], position=2)


@pytest.mark.parametrize("body", [b"[" * 5000, b'{"query": "x", "k": ' + b"9" * 5000 + b"}"])
def test_bodies_python_cannot_parse_are_400_not_500(client: TestClient, body: bytes) -> None:
    response = client.post("/search", content=body, headers=JSON_HEADERS)
    assert response.status_code == 400 and strict_json(response.content)["request_id"] == response.headers[
        "x-request-id"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_case_2_non_finite_metadata_is_422_and_nothing_is_stored(client: TestClient, constant: str) -> None:
    body = '{"documents": [{"doc_id": "X-1", "text": "soap", "metadata": {"price": ' + constant + "}}]}"
    response = client.post("/index-documents", content=body.encode(), headers=JSON_HEADERS)
    _assert_422(response, ["body", "documents", "0", "metadata", "price"])
    assert client.get("/documents/X-1").status_code == 404


@pytest.mark.parametrize("path", ["/search", "/recommend"])
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_k_is_422_naming_k(client: TestClient, path: str, constant: str) -> None:
    field = '"query": "soap"' if path == "/search" else '"history_texts": ["soap"]'
    response = client.post(path, content=f'{{{field}, "k": {constant}}}'.encode(), headers=JSON_HEADERS)
    _assert_422(response, ["body", "k"])


def test_case_3_a_doc_id_with_a_slash_is_422_naming_the_field_and_nothing_is_stored(client: TestClient) -> None:
    refused = client.post("/index-documents", json={"documents": [{"doc_id": "shelf/A-1", "text": "test item"},
                                                                  {"doc_id": "A-2", "text": "second item"}]})
    body = _assert_422(refused, ["body", "documents", "0", "doc_id"], position=5)
    assert "'/'" in body["error"]
    assert client.get("/documents/A-2").status_code == 404  # the batch is all-or-nothing


@pytest.mark.parametrize("doc_id, position", [
    ("/A-1", 0), ("shelf/", 5), ("shelf//A-1", 5), ("shelf/./A-1", 5), ("shelf/../A-1", 5), (".", 0), ("..", 0),
    (" A-1", 0), ("A-1 ", 3), ("A\t1", 1), ("A\u200b1", 1), ("A\x001", 1), ("A-1\udc00", 3),
])
def test_doc_ids_that_cannot_round_trip_are_refused_with_the_position(client: TestClient, doc_id: str,
                                                                    position: int) -> None:
    response = client.post("/index-documents", headers=JSON_HEADERS,
                           content=json.dumps({"documents": [{"doc_id": doc_id, "text": "x"}]}).encode())
    _assert_422(response, ["body", "documents", "0", "doc_id"], position=position)


def test_metadata_depth_limit(client: TestClient) -> None:
    deepest: Any = "leaf"
    for _ in range(MAX_METADATA_DEPTH):  # the metadata object and its descendants: MAX_METADATA_DEPTH levels
        deepest = {"a": deepest}
    accepted = client.post("/index-documents", json={"documents": [{"doc_id": "DEEP-1", "text": "deep",
                                                                    "metadata": deepest}]})
    assert accepted.status_code == 200, accepted.text
    assert client.get("/documents/DEEP-1").json()["metadata"] == deepest
    refused = client.post("/index-documents", json={"documents": [{"doc_id": "DEEP-2", "text": "deep",
                                                                   "metadata": {"a": deepest}}]})
    body = _assert_422(refused, ["body", "documents", "0", "metadata", *["a"] * MAX_METADATA_DEPTH])
    assert "deeper than" in body["error"]


def test_text_rule_allows_tabs_newlines_and_any_valid_unicode(client: TestClient) -> None:
    query = "rose\tlip balm\r\nvegan \u00a0 \U0001f484 \u200d caf\u00e9"
    response = client.post("/search", json={"query": query, "k": 3})
    assert response.status_code == 200, response.text
    indexed = client.post("/index-documents", json={"documents": [
        {"doc_id": "ÉTAGÈRE 7-B-2 \U0001f484", "text": query, "metadata": {"note\n": ["a\tb", 1.5, None]}}]})
    assert indexed.status_code == 200, indexed.text
    document = client.get("/documents/" + quote("ÉTAGÈRE 7-B-2 \U0001f484", safe=""))
    assert document.status_code == 200 and document.json()["text"] == query


def test_the_openapi_pattern_states_the_enforced_rule_for_every_scalar_value() -> None:
    pattern = re.compile(TEXT_PATTERN)
    for code in [*range(0xD800), *range(0xE000, 0x110000)]:  # a JSON Schema pattern cannot hold surrogates
        assert (pattern.match(chr(code)) is not None) == (text_error(chr(code)) is None), hex(code)
    assert text_error("\ud83d") is not None


# --- generated variants: every endpoint, every string field, every number -------------------------------

FORBIDDEN_CHARACTERS = st.one_of(
    st.integers(0xD800, 0xDFFF),  # lone surrogates
    st.sampled_from([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]),  # controls
).map(chr)
# Valid text: any Unicode scalar value but the controls (tab, LF, CR included: they are allowed).
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]) | st.sampled_from("\t\n\r"), max_size=20)
NAME = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=8)  # a valid doc_id, key or word
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def _with_forbidden_character(draw: st.DrawFn, base: st.SearchStrategy[str]) -> tuple[str, int]:
    text = draw(base)
    position = draw(st.integers(0, len(text)))
    return text[:position] + draw(FORBIDDEN_CHARACTERS) + text[position:], position


def _nest(path: list[str | int], leaf: Any) -> Any:
    for step in reversed(path):
        leaf = {step: leaf} if isinstance(step, str) else [*([0] * step), leaf]
    return leaf


METADATA_PATH = st.lists(NAME | st.integers(0, 2), min_size=1, max_size=4).filter(lambda p: isinstance(p[0], str))


@st.composite
def bad_requests(draw: st.DrawFn) -> tuple[str, dict[str, Any], list[str], int | None]:
    """(path, body, the loc that must be named, the position that must be named or None).

    The body is valid but for one string with a forbidden character or one non-finite number.
    """
    field = draw(st.sampled_from(["query", "search.k", "history", "history_texts", "recommend.k", "doc_id", "text",
                                  "metadata.key", "metadata.value", "metadata.number"]))
    words = draw(st.lists(NAME, min_size=1, max_size=3))
    index = draw(st.integers(0, len(words) - 1))
    bad_text, position = draw(_with_forbidden_character(TEXT))
    bad_name, name_position = draw(_with_forbidden_character(NAME))
    document: dict[str, Any] = {"doc_id": "G-" + words[0], "text": " ".join(words)}
    path: list[str | int] = draw(METADATA_PATH)
    if field in ("query", "search.k"):
        body: dict[str, Any] = {"query": " ".join(words), "k": 5}
        if field == "query":
            body["query"] = "q" + bad_text
            return "/search", body, ["body", "query"], position + 1
        body["k"] = draw(NON_FINITE)
        return "/search", body, ["body", "k"], None
    if field in ("history", "history_texts", "recommend.k"):
        key = "history_texts" if field == "history_texts" else "history"
        body = {key: list(words), "k": 5}
        if field == "recommend.k":
            body["k"] = draw(NON_FINITE)
            return "/recommend", body, ["body", "k"], None
        body[key][index] = bad_text
        return "/recommend", body, ["body", key, str(index)], position
    documents = [{"doc_id": f"G-{i}", "text": word} for i, word in enumerate(words)]
    documents[index] = document
    loc = ["body", "documents", str(index)]
    if field == "doc_id":
        document["doc_id"] = bad_name
        return "/index-documents", {"documents": documents}, [*loc, "doc_id"], name_position
    if field == "text":
        document["text"] = "t" + bad_text
        return "/index-documents", {"documents": documents}, [*loc, "text"], position + 1
    if field == "metadata.key":
        document["metadata"] = _nest(path[:-1], {bad_name: 1})
        return ("/index-documents", {"documents": documents},
                [*loc, "metadata", *map(str, path[:-1]), bad_name], name_position)
    leaf: Any = bad_text if field == "metadata.value" else draw(NON_FINITE)
    document["metadata"] = _nest(path, leaf)
    return ("/index-documents", {"documents": documents}, [*loc, "metadata", *map(str, path)],
            position if field == "metadata.value" else None)


_REQUEST_MODELS = {"/search": SearchRequest, "/recommend": RecommendRequest, "/index-documents": IndexDocumentsRequest}


_REPAIR = dict.fromkeys([*range(0xD800, 0xE000), *range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20),
                         *range(0x7F, 0xA0)], "x")


def _repaired(value: Any) -> Any:
    """The same body with every forbidden character and non-finite number replaced (for the control)."""
    if isinstance(value, str):
        return value.translate(_REPAIR)
    if isinstance(value, float) and not math.isfinite(value):
        return 5
    if isinstance(value, dict):
        return {_repaired(k): _repaired(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_repaired(v) for v in value]
    return value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request_case=bad_requests())
def test_generated_bad_strings_and_numbers_are_422_naming_field_and_position(
        client: TestClient, request_case: tuple[str, dict[str, Any], list[str], int | None]) -> None:
    path, body, loc, position = request_case
    # A metadata key that is not valid Unicode is named by its escape (\\udXXX): the error body is UTF-8.
    loc = [part.encode("utf-8", "backslashreplace").decode("utf-8") for part in loc]
    # The control: the body with the one fault repaired is valid, so the 422 is about that fault.
    _REQUEST_MODELS[path].model_validate(_repaired(body))
    # Python's encoder writes a lone surrogate as its \\u escape and NaN/Infinity as those tokens.
    response = client.post(path, content=json.dumps(body).encode(), headers=JSON_HEADERS)
    _assert_422(response, loc, position)


# --- the doc_id round trip, against a real server -------------------------------------------------------

class LiveServer:
    """The app under uvicorn in a thread (the real HTTP parsing, percent-decoding and keep-alive)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


@pytest.fixture(scope="module")
def live(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    store = tmp_path_factory.mktemp("live") / "store.sqlite3"
    with LiveServer(create_app(ServiceSettings(bundle_dir=bundle_dir, store_path=store,  # type: ignore[call-arg]
                                               log_json=False))) as server:
        yield server


def _exchange(connection: http.client.HTTPConnection, method: str, path: str,
              body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    connection.request(method, path, body=body, headers=JSON_HEADERS if body is not None else {})
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


# Generated doc_ids: arbitrary code points (surrogates and controls included), and the characters that
# matter in URLs, combined with the segment shapes the rule is about.
URL_PIECES = st.sampled_from(["/", ".", "..", " ", "%", "%2F", "%25", "?", "#", "&", "+", "=", ";", "\\", "~", ":",
                              "@", "A-1", "shelf", "é", "\U0001f484", "\u00a0", "\u200b", "\x00", "\ud83d"])
DOC_IDS = st.one_of(
    st.text(st.characters(), min_size=1, max_size=12),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12),
    st.lists(URL_PIECES | NAME, min_size=1, max_size=6).map("".join),
    st.lists(st.lists(URL_PIECES | NAME, min_size=1, max_size=3).map("".join), min_size=2, max_size=4).map("/".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc_id=DOC_IDS)
def test_every_accepted_doc_id_round_trips_through_get_documents(live: LiveServer, doc_id: str) -> None:
    connection = live.connection()
    try:
        status, headers, raw = _exchange(connection, "POST", "/index-documents", json.dumps(
            {"documents": [{"doc_id": doc_id, "text": "round trip item", "metadata": {"id": doc_id}}]}).encode())
        body = strict_json(raw)
        assert headers["x-request-id"] == body.get("request_id", headers["x-request-id"])
        if status == 422:  # refused by the doc_id rule, naming the field
            assert body["details"][0]["loc"] == ["body", "documents", "0", "doc_id"], body
            event("refused")
            return
        assert status == 200, body
        event("accepted")
        # A client percent-encodes the doc_id (one path segment).
        status, _, raw = _exchange(connection, "GET", "/documents/" + quote(doc_id, safe=""))
        assert status == 200, (doc_id, raw)
        document = strict_json(raw)
        assert document["doc_id"] == doc_id and document["metadata"] == {"id": doc_id}
    finally:
        connection.close()


# --- unhandled errors ------------------------------------------------------------------------------------

def test_an_unhandled_error_is_a_500_with_its_request_id_and_the_connection_stays_usable(
        live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(query: str, k: int) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(live.app.state.components.engine, "search", broken)
    connection = live.connection()
    try:
        status, headers, raw = _exchange(connection, "POST", "/search", b'{"query": "lip balm"}')
        assert status == 500
        body = strict_json(raw)
        assert body["error_type"] == "internal" and body["request_id"] == headers["x-request-id"] != "-"
        socket_before = connection.sock
        status, headers, raw = _exchange(connection, "GET", "/healthz")
        assert status == 200 and connection.sock is socket_before  # same keep-alive connection
        assert headers["x-request-id"] and strict_json(raw) == {"status": "ok"}
    finally:
        connection.close()
    metrics = live.app.state.metrics.render().decode()
    assert 'lmindexer_errors_total{error_type="internal"}' in metrics


def test_an_unhandled_error_in_process_carries_the_callers_request_id(client: TestClient,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(client.app.state.components.engine, "recommend", broken)  # type: ignore[attr-defined]
    response = client.post("/recommend", json={"history": ["D000001"]}, headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "req-500"
    assert strict_json(response.content)["request_id"] == "req-500"


# --- responses: one definition, strict JSON --------------------------------------------------------------

def _assert_bodies_are_their_response_models(client: TestClient) -> list[bool]:
    cached = []
    for path, body in (("/search", {"query": "vegan lavender serum", "k": 5}),
                       ("/recommend", {"history": ["D000001", "NOPE-9"], "k": 5})):
        for _ in range(2):  # computed, then (with Redis) cached: the same shape either way
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            model = SearchResponse.model_validate_json(response.content, strict=True)
            assert len(model.results) == 5
            assert model.model_dump_json().encode() == response.content
            cached.append(model.cached)
    for doc_id in ("D000001", "D000001"):
        response = client.get(f"/documents/{doc_id}")
        assert DocumentResponse.model_validate_json(response.content).model_dump_json().encode() == response.content
    return cached


def test_search_and_recommend_bodies_are_exactly_their_response_model(client: TestClient) -> None:
    assert _assert_bodies_are_their_response_models(client) == [False] * 4


def test_cached_bodies_are_exactly_their_response_model(bundle_dir: Path, tmp_path: Path, redis_url: str) -> None:
    app = create_app(ServiceSettings(bundle_dir=bundle_dir, store_path=tmp_path / "store.sqlite3",  # type: ignore[call-arg]
                                     log_json=False, redis_url=redis_url))
    with TestClient(app) as cached_client:
        assert _assert_bodies_are_their_response_models(cached_client) == [False, True, False, True]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec="utf-8")),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12)


def _finite(value: Any) -> Any:
    """What a strict encoder must make of ``value``: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@settings(max_examples=200, deadline=None)
@given(metadata=st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=4),
       score=st.floats(allow_nan=False, allow_infinity=False), warnings=st.lists(st.text(max_size=8), max_size=2))
def test_the_response_encoders_write_strict_json_for_any_metadata(metadata: dict[str, Any], score: float,
                                                                  warnings: list[str]) -> None:
    # Metadata as a bundle's documents.jsonl or an older store may hold it: NaN and Infinity included.
    document = {"doc_id": "D", "text": "t", "metadata": metadata, "semantic_id": [1, 2]}
    assert strict_json(encode_document(document)) == {**document, "metadata": _finite(metadata)}
    hit = SearchHit(doc_id="D", score=score, semantic_id=[1, 2],
                    document=DocumentBody(doc_id="D", text="t", metadata=metadata))
    body = encode_search_response(encode_hits([hit]), index_version=3, took_ms=0.5, cached=True, warnings=warnings)
    decoded = strict_json(body)
    assert decoded["results"][0]["score"] == score
    assert decoded["results"][0]["document"]["metadata"] == _finite(metadata)
    assert decoded["warnings"] == warnings and decoded["cached"] is True
    assert strict_json(encode_json(error_body("x", "validation_error", [{"metadata": metadata}]))) == {
        "error": "x", "error_type": "validation_error", "request_id": "-", "details": [{"metadata": _finite(metadata)}]}


def test_answers_framed_by_fastapi_are_strict_json_too(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    components = client.app.state.components  # type: ignore[attr-defined]
    monkeypatch.setattr(components, "info", lambda: {"manifest": {"metrics": {"ndcg@10": math.nan}}})
    response = client.get("/info")
    assert response.status_code == 200 and strict_json(response.content) == {"manifest": {"metrics": {"ndcg@10": None}}}


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_a_non_finite_score_cannot_be_put_in_a_hit(score: float) -> None:
    with pytest.raises(ValidationError):
        SearchHit(doc_id="D", score=score, semantic_id=[1], document=DocumentBody(doc_id="D", text="t"))


def test_hits_the_model_scores_non_finite_are_dropped_and_counted(client: TestClient) -> None:
    index = client.app.state.components.engine.index  # type: ignore[attr-defined]
    snapshot = index.snapshot
    rows = [0, 1, 2, 3]
    metrics = Metrics()
    ranker = ModelRanker({}, index, metrics, beam_size=4, batch_max_size=1, batch_max_wait_s=0.0, queue_max_depth=1)
    result = SimpleNamespace(
        counts=np.array([4]), rows=np.array([rows]),
        semantic_ids=np.array([[snapshot.document_at(r).semantic_id for r in rows]]),
        scores=np.array([[-1.0, -2.0, -np.inf, np.nan]]))
    hits = ranker._hits("retriever", snapshot, result, 0, 4)
    assert [hit.doc_id for hit in hits] == [snapshot.document_at(r).doc_id for r in rows[:2]]
    assert 'lmindexer_nonfinite_scores_total{model="retriever"} 2.0' in metrics.render().decode()
