"""The item-token recommender end to end on a tiny P5 dataset: `lmindexer finetune --task recommendation`,
`lmindexer export --recommender`, the service's /recommend, and an item added after the export read in
histories and recommended at once; with and without item ID embeddings (moved into the text vectors' space
at export, `item_id_offsets`, and added by the service to the bundle's items only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bundle import Bundle, read_item_id_offsets, read_item_vectors
from lmindexer.cli import main
from service.app import create_app
from service.settings import ServiceSettings
from tests.tiny_p5 import write_tiny_p5
from training.indexing.network import NetworkConfig, SemanticIdNetwork


@pytest.fixture(scope="module", params=[False, True], ids=["text-and-codes", "item-id-embedding"])
def bundle_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("p5")
    items, sequences, ids_dir = write_tiny_p5(root, codebook_sizes=(5, 5))
    model = root / "model"
    assert main(["finetune", "--task", "recommendation", "--items", str(items), "--sequences", str(sequences),
                 "--ids", str(ids_dir), "--preset", "tiny", "--set", "max_epochs=6", "--out", str(model),
                 "--set", f"item_id_embedding={str(request.param).lower()}", "--no-progress"]) == 0
    # HC IDs have no indexer network: an (untrained) ID decoder over the encoder that made the vectors
    # maps new documents to codes; its encoder, mean-pooled, gives the vectors training read.
    indexer = root / "indexer"
    SemanticIdNetwork(NetworkConfig(num_levels=2, codebook_size=5, counter_size=1, decoder_layers=1,
                                    decoder_ff_size=64)).eval().save(indexer)
    out = root / "bundle"
    assert main(["export", "--recommender", str(model), "--indexer", str(indexer), "--max-document-length", "32",
                 "--parity-inputs", "30", "--no-indexer-int8", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def client(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    settings = ServiceSettings(bundle_dir=bundle_dir, store_path=store, log_json=False, indexer_precision="fp32")
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_export_records_the_recommender_and_its_checks(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    entry = bundle.manifest.models["recommender"]
    assert set(bundle.manifest.models) == {"indexer", "recommender"} and bundle.manifest.num_documents == 20
    assert entry.parity is not None and entry.parity.top_k_identical and entry.parity.max_abs_diff <= 1e-4
    vectors = bundle.manifest.item_vectors
    assert vectors is not None and vectors.source == "indexer" and vectors.max_abs_diff <= 1e-3
    assert entry.default_mode in ("generative", "hybrid") and "valid" in entry.evaluation
    assert read_item_vectors(bundle).shape == (20, 384)
    offsets = read_item_id_offsets(bundle)
    if entry.item_id_offsets is None:
        assert offsets is None
    else:  # the trained items' embeddings; the cold item (never seen in training) has none
        assert offsets is not None and offsets.shape == (20, 384)
        assert (np.abs(offsets).max(axis=1) > 0).sum() >= 18
    table = bundle.documents()
    assert "product number" not in table.texts[7] and "brand3" in table.texts[7]  # the item without a title


def test_the_trained_rule_is_served(client: TestClient) -> None:
    """Users go i -> i + 1: the next item of A03, A04, A05 is A06 (warm items)."""
    for mode in ("generative", "hybrid"):
        hits = client.post("/recommend", json={"history": ["A03", "A04", "A05"], "k": 5, "mode": mode}).json()
        assert "A06" in [h["doc_id"] for h in hits["results"]], (mode, hits)


def test_an_item_added_after_the_export_is_recommended_and_read_in_histories(client: TestClient) -> None:
    added = client.post("/index-documents", json={"documents": [
        {"doc_id": "A20", "text": "title: product number 20, brand: brand0, category: Beauty, Skin"}]})
    assert added.status_code == 200, added.text
    # k = 25 > the 21 items: the beam keeps every ID the live trie holds, so the new item is among the
    # candidates; in hybrid mode the dense head scores it from the vector computed when it was indexed.
    for mode in ("generative", "hybrid"):
        hits = client.post("/recommend", json={"history": ["A01", "A02"], "k": 25, "mode": mode}).json()["results"]
        assert "A20" in [h["doc_id"] for h in hits] and len(hits) == 19, mode
        assert all(np.isfinite(h["score"]) for h in hits)
    with_new = client.post("/recommend", json={"history": ["A18", "A19", "A20"], "k": 5})
    assert with_new.status_code == 200 and "A20" not in [h["doc_id"] for h in with_new.json()["results"]]
    without_new = client.post("/recommend", json={"history": ["A18", "A19"], "k": 5})
    assert with_new.json()["results"] != without_new.json()["results"]  # the new item is read
