"""POST /recommend with the item-token recommender of the tiny bundle (tests/service/tiny_bundle.py):
the served ranking is `bundle.recommendation.recommend` over the bundle's graphs and vectors; histories
longer than the model are cut to their newest items; the mode and the exclusion rule; history_texts read
like new documents; a document added through /index-documents gets its vector (stored durably) and is
recommended and read in histories at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bundle import Bundle, History, RecommenderRunner, mean_pooled, read_item_vectors, recommend
from bundle.runner import OnnxRunner
from service.app import create_app
from service.settings import ServiceSettings
from trie import SemanticIdTrie


def _app(bundle_dir: Path, store: Path, **settings: object) -> TestClient:
    return TestClient(create_app(ServiceSettings(bundle_dir=bundle_dir, store_path=store, log_json=False,
                                                 indexer_precision="fp32", **settings)))


@pytest.fixture(scope="module")
def client(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with _app(bundle_dir, tmp_path_factory.mktemp("store") / "store.sqlite3") as c:
        yield c


def _direct(bundle: Bundle, rows: list[int], k: int, mode: str, exclude: bool = True) -> list[str]:
    """What the bundle's recommender ranks for a history of bundle rows, without the service."""
    entry = bundle.manifest.models["recommender"]
    vectors = read_item_vectors(bundle)
    trie = SemanticIdTrie.load(bundle.trie_path)
    history = History(vectors[rows], trie.semantic_ids_of(np.asarray(rows)))
    result = recommend(RecommenderRunner.for_bundle(bundle), [history], trie, lambda r: vectors[r], mode=mode,
                       top_k=k, beam_size=entry.beam_size, hybrid_weight=entry.hybrid_weight, exclude_history=exclude)
    doc_ids = bundle.documents().doc_ids
    return [doc_ids[int(r)] for r in result.rows[0, : int(result.counts[0])]]


def _ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return [hit["doc_id"] for hit in response.json()["results"]]


@pytest.mark.parametrize("mode", ["generative", "hybrid"])
def test_the_service_ranks_what_the_bundle_recommender_ranks(client: TestClient, bundle_dir: Path, mode: str) -> None:
    bundle = Bundle.open(bundle_dir)
    doc_ids = bundle.documents().doc_ids
    rows = [3, 17, 42, 8]
    served = _ids(client.post("/recommend", json={"history": [doc_ids[r] for r in rows], "k": 10, "mode": mode}))
    assert served == _direct(bundle, rows, 10, mode)
    assert not set(served) & {doc_ids[r] for r in rows}  # the history's own items are left out


def test_the_modes_differ_and_the_default_is_the_manifests(client: TestClient, bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    assert bundle.manifest.models["recommender"].default_mode == "generative"
    history = {"history": ["D000005", "D000006", "D000007"], "k": 10}
    default = _ids(client.post("/recommend", json=history))
    assert default == _ids(client.post("/recommend", json={**history, "mode": "generative"}))
    hybrid = client.post("/recommend", json={**history, "mode": "hybrid"})
    assert _ids(hybrid) != default  # w = 0.5 re-ranks the beam with the dense head
    scores = [h["score"] for h in hybrid.json()["results"]]
    assert scores == sorted(scores, reverse=True)


def test_a_history_longer_than_the_model_is_cut_to_its_newest_items(client: TestClient, bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    max_history = bundle.manifest.models["recommender"].max_history
    doc_ids = bundle.documents().doc_ids
    long = client.post("/recommend", json={"history": doc_ids[: max_history + 10], "k": 5, "mode": "hybrid"})
    assert any(f"{max_history} most recent" in w for w in long.json()["warnings"])
    # the whole history is still excluded; the model reads the newest max_history items
    served = _ids(long)
    assert served == _direct(bundle, list(range(max_history + 10)), 5, "hybrid")
    assert not set(served) & set(doc_ids[: max_history + 10])


def test_repeat_purchases_are_allowed_when_exclusion_is_off(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    rows = list(range(0, 60, 3))
    with _app(bundle_dir, tmp_path / "store.sqlite3", recommend_exclude_history=False) as c:
        served = _ids(c.post("/recommend", json={"history": [bundle.documents().doc_ids[r] for r in rows], "k": 100}))
    assert served == _direct(bundle, rows, 100, "generative", exclude=False)
    assert set(served) & {bundle.documents().doc_ids[r] for r in rows}


def test_history_texts_are_read_with_the_indexers_vectors(client: TestClient, bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    table = bundle.documents()
    engine = client.app.state.components.engine  # type: ignore[attr-defined]
    history = client.portal.call(engine._history_of_texts, [table.texts[4], table.texts[9]])  # type: ignore[attr-defined]
    np.testing.assert_allclose(history.vectors, read_item_vectors(bundle)[[4, 9]], atol=1e-5)
    # learned codes are the indexer's greedy codes (a document's own ones), the counter a free one
    np.testing.assert_array_equal(history.semantic_ids[:, :-1], table.semantic_ids[[4, 9], :-1])
    assert _ids(client.post("/recommend", json={"history_texts": [table.texts[4], table.texts[9]], "k": 3}))


def test_a_document_added_after_export_is_recommended_and_read_at_once(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    store = tmp_path / "store.sqlite3"
    with _app(bundle_dir, store) as c:
        # A new document with the text of the item ranked first for a history: the indexer gives it that
        # item's learned prefix (and a free counter), so the ID decoder's beam reaches it through the trie.
        top = _ids(c.post("/recommend", json={"history": ["D000001"], "k": 1, "mode": "generative"}))[0]
        text = c.get(f"/documents/{top}").json()["text"]
        added = c.post("/index-documents", json={"documents": [{"doc_id": "NEW-1", "text": text}]})
        assert added.status_code == 200, added.text
        new_id = added.json()["documents"][0]["semantic_id"]
        assert new_id[:-1] == c.get(f"/documents/{top}").json()["semantic_id"][:-1]
        for mode in ("generative", "hybrid"):  # hybrid: the dense head scores it from its stored vector
            hits = c.post("/recommend", json={"history": ["D000001"], "k": 100, "mode": mode}).json()["results"]
            assert "NEW-1" in [h["doc_id"] for h in hits], mode
        # and it reads in histories at once (excluded from its own recommendations)
        assert "NEW-1" not in _ids(c.post("/recommend", json={"history": ["D000001", "NEW-1"], "k": 100}))
        index = c.app.state.components.engine.index  # type: ignore[attr-defined]
        row = index.snapshot.row_of_doc_id("NEW-1")
        served_vector = index.snapshot.vectors_of(np.asarray([row]))[0]
    indexer = OnnxRunner.for_model(bundle, "indexer")
    encoded = indexer.encode([text])
    np.testing.assert_allclose(served_vector, mean_pooled(encoded.states, encoded.attention_mask)[0], atol=1e-5)
    # durable: a restarted service reads the same vector from its store
    with _app(bundle_dir, store) as c:
        index = c.app.state.components.engine.index  # type: ignore[attr-defined]
        np.testing.assert_array_equal(index.snapshot.vectors_of(np.asarray([row]))[0], served_vector)


def test_an_empty_history_is_422_naming_the_field(client: TestClient) -> None:
    for field in ("history", "history_texts"):
        response = client.post("/recommend", json={field: []})
        assert response.status_code == 422
        assert response.json()["details"][0]["loc"] == ["body", field]


def test_an_unknown_mode_is_422_naming_it(client: TestClient) -> None:
    response = client.post("/recommend", json={"history": ["D000001"], "mode": "popular"})
    assert response.status_code == 422
    assert "popular" in response.json()["error"] and response.json()["details"][0]["loc"] == ["body", "mode"]
