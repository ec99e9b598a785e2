"""POST /search `mode` on the tiny bundle (tests/service/tiny_bundle.py): generative (the beam order, the
manifest's default there) and hybrid (bundle.retrieval over the live dense index); the mode's validation
(422 naming it), a bundle without item vectors, documents added through /index-documents found by their
own title, the mode in the result cache's key, and the metrics."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bundle import SEARCH_MODES, Bundle, OnnxRunner, read_item_vectors
from service.app import create_app
from service.schemas import SEARCH_MODE_VALUES
from service.settings import ServiceSettings


def _app(bundle_dir: Path, store: Path, **settings: object) -> TestClient:
    return TestClient(create_app(ServiceSettings(bundle_dir=bundle_dir, store_path=store, log_json=False,
                                                 indexer_precision="fp32", **settings)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with _app(bundle_dir, tmp_path_factory.mktemp("store") / "store.sqlite3") as c:
        yield c


def _edited_bundle(bundle_dir: Path, target: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """A copy of the bundle whose manifest.json is changed by ``edit(raw dict)``."""
    shutil.copytree(bundle_dir, target)
    raw = json.loads((target / "manifest.json").read_text())
    edit(raw)
    (target / "manifest.json").write_text(json.dumps(raw))
    return target


def _hits(response) -> list[dict]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return response.json()["results"]


def _nearest(bundle: Bundle, query: str, k: int) -> tuple[list[str], np.ndarray]:
    """The k documents of highest cosine with the query, by brute force over the bundle's item vectors (the
    query's vector: the bundle's fp32 indexer encoder, mean-pooled, as the manifest says they were made)."""
    vectors = read_item_vectors(bundle)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    query_vector = OnnxRunner.for_model(bundle, "indexer").mean_vectors([query])[0]
    cosines = vectors @ (query_vector / np.linalg.norm(query_vector))
    order = np.lexsort((np.arange(len(cosines)), -cosines))[:k]
    return [bundle.documents().doc_ids[i] for i in order], cosines[order]


@pytest.mark.parametrize("mode, names", [("dense", "'dense'"), ("Hybrid", "'Hybrid'"), ("", "''"), (5, "mode")])
def test_an_unknown_mode_is_422_naming_it(client: TestClient, mode: object, names: str) -> None:
    response = client.post("/search", json={"query": "rose toner", "mode": mode})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_type"] == "validation_error" and body["details"][0]["loc"] == ["body", "mode"]
    assert "mode" in body["error"] and names in body["error"]


def test_the_default_mode_is_the_manifests(client: TestClient, bundle_dir: Path) -> None:
    assert Bundle.open(bundle_dir).manifest.models["retriever"].search.default_mode == "generative"
    for query in ("rose toner", "matte red lipstick"):
        default = _hits(client.post("/search", json={"query": query, "k": 10}))
        assert default == _hits(client.post("/search", json={"query": query, "k": 10, "mode": "generative"}))
        assert all(h["score"] <= 0 for h in default)  # generative: summed log-probabilities


def test_hybrid_with_weight_zero_returns_the_documents_whose_vectors_are_nearest(bundle_dir: Path,
                                                                                 tmp_path: Path) -> None:
    bundle = _edited_bundle(bundle_dir, tmp_path / "bundle",
                            lambda raw: raw["models"]["retriever"]["search"].update(hybrid_weight=0.0))
    with _app(bundle, tmp_path / "store.sqlite3") as c:
        for query in ("rose toner", "vegan shampoo with argan oil", "gold glossy lipstick"):
            hits = _hits(c.post("/search", json={"query": query, "k": 10, "mode": "hybrid"}))
            doc_ids, cosines = _nearest(Bundle.open(bundle), query, 10)
            assert [h["doc_id"] for h in hits] == doc_ids, query
            np.testing.assert_allclose([h["score"] for h in hits], cosines, atol=1e-5)


def test_hybrid_scores_are_the_rule_and_rank_near_documents_above_far_ones(client: TestClient,
                                                                           bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    weight = bundle.manifest.models["retriever"].search.hybrid_weight
    query = "lavender serum"
    hits = _hits(client.post("/search", json={"query": query, "k": 10, "mode": "hybrid"}))
    assert len(hits) == 10
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    doc_ids, _ = _nearest(bundle, query, len(bundle.documents()))
    cosine_of = dict(zip(doc_ids, _nearest(bundle, query, len(doc_ids))[1], strict=True))
    generative = {h["doc_id"]: np.exp(h["score"])
                  for h in _hits(client.post("/search", json={"query": query, "k": 20, "mode": "generative"}))}
    for hit in hits:  # (1 - w) * cosine + w * p, p the beam's probability of the ID, 0 outside the beam
        want = (1 - weight) * cosine_of[hit["doc_id"]] + weight * generative.get(hit["doc_id"], 0.0)
        assert hit["score"] == pytest.approx(want, abs=1e-5), hit["doc_id"]
    # every document outside the answer scores lower than its last hit (no candidate is left out)
    floor = min(scores)
    assert all((1 - weight) * cosine_of[d] + weight * generative.get(d, 0.0) <= floor + 1e-6
               for d in doc_ids if d not in {h["doc_id"] for h in hits})


def test_a_document_added_through_the_api_is_found_by_hybrid_search_with_its_exact_title(bundle_dir: Path,
                                                                                         tmp_path: Path) -> None:
    documents = [
        {"doc_id": "NEW-1", "text": "title: Zanzibar Quokka Velvet Cleansing Balm, brand: Nimbus",
         "metadata": {"title": "Zanzibar Quokka Velvet Cleansing Balm"}},
        {"doc_id": "NEW-2", "text": "title: Aurora Borealis Sparkle Nail Lacquer, brand: Polaris",
         "metadata": {"title": "Aurora Borealis Sparkle Nail Lacquer"}},
    ]
    store = tmp_path / "store.sqlite3"
    with _app(bundle_dir, store) as c:
        added = c.post("/index-documents", json={"documents": documents})
        assert added.status_code == 200, added.text
        for document in documents:
            hits = _hits(c.post("/search", json={"query": document["metadata"]["title"], "k": 10, "mode": "hybrid"}))
            assert document["doc_id"] in [h["doc_id"] for h in hits], document["doc_id"]
    with _app(bundle_dir, store) as c:  # after a restart: its vector comes back from the store
        hits = _hits(c.post("/search", json={"query": documents[0]["metadata"]["title"], "k": 10, "mode": "hybrid"}))
        assert "NEW-1" in [h["doc_id"] for h in hits]
        # re-indexed with another text: its new vector replaces the old one in the dense index
        changed = c.post("/index-documents", json={"documents": [
            {"doc_id": "NEW-1", "text": "title: Plain Cotton Pads, brand: Nimbus"}]})
        assert changed.json()["documents"][0]["status"] == "reindexed"
        index = c.app.state.components.engine.index  # type: ignore[attr-defined]
        row = index.snapshot.row_of_doc_id("NEW-1")
        vector = OnnxRunner.for_model(Bundle.open(bundle_dir), "indexer").mean_vectors(
            ["title: Plain Cotton Pads, brand: Nimbus"])[0]
        np.testing.assert_allclose(index.snapshot.dense.matrix[row], vector / np.linalg.norm(vector), atol=1e-5)


def test_hybrid_on_a_bundle_without_item_vectors_is_422_naming_mode(bundle_dir: Path, tmp_path: Path) -> None:
    def without_vectors(raw: dict) -> None:
        raw["item_vectors"] = None
        del raw["models"]["recommender"]  # the recommender needs them

    bundle = _edited_bundle(bundle_dir, tmp_path / "bundle", without_vectors)
    with _app(bundle, tmp_path / "store.sqlite3") as c:
        response = c.post("/search", json={"query": "rose toner", "mode": "hybrid"})
        assert response.status_code == 422, response.text
        assert response.json()["details"][0]["loc"] == ["body", "mode"]
        assert "item vectors" in response.json()["error"]
        assert _hits(c.post("/search", json={"query": "rose toner"}))  # generative still answers
        added = c.post("/index-documents", json={"documents": [{"doc_id": "N", "text": "title: sea salt spray"}]})
        assert added.status_code == 200, added.text


def test_the_mode_is_part_of_the_cache_key(bundle_dir: Path, tmp_path: Path, redis_url: str) -> None:
    with _app(bundle_dir, tmp_path / "store.sqlite3", redis_url=redis_url) as c:
        generative = c.post("/search", json={"query": "citrus toner", "k": 5, "mode": "generative"}).json()
        hybrid = c.post("/search", json={"query": "citrus toner", "k": 5, "mode": "hybrid"}).json()
        again = c.post("/search", json={"query": "citrus toner", "k": 5, "mode": "hybrid"}).json()
        default = c.post("/search", json={"query": "citrus toner", "k": 5}).json()
    assert (generative["cached"], hybrid["cached"], again["cached"], default["cached"]) == (False, False, True, True)
    assert hybrid["results"] == again["results"] and hybrid["results"] != generative["results"]
    assert default["results"] == generative["results"]  # the default (generative here) shares its entry


def test_searches_are_counted_by_mode(bundle_dir: Path, tmp_path: Path) -> None:
    with _app(bundle_dir, tmp_path / "store.sqlite3") as c:
        for mode in ("hybrid", "hybrid", None):
            c.post("/search", json={"query": "mint balm", **({"mode": mode} if mode else {})})
        text = c.get("/metrics").text
    assert 'lmindexer_search_queries_total{mode="hybrid"} 2.0' in text
    assert 'lmindexer_search_queries_total{mode="generative"} 1.0' in text
    assert 'lmindexer_hybrid_search_duration_seconds_count{model="retriever"}' in text


def test_the_schema_offers_the_bundles_modes(client: TestClient) -> None:
    assert tuple(SEARCH_MODE_VALUES) == SEARCH_MODES
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]["mode"]
    assert {"enum": list(SEARCH_MODES), "type": "string"} in schema["anyOf"]
    assert "(1 - w) * cosine + w * p" in schema["description"]
