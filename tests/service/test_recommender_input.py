"""The recommender is served with the inputs it was trained and parity-checked with: its history is joined
by the manifest's rule and cut at the recommender's own max_input_length, not at another model's length.

The tiny bundle's recommender reads 64 tokens and its indexer 128 (tests/service/tiny_bundle.py). Until
issue 13 the service cut the recommender's input at the documents' length (128) because it read a key the
export never wrote; a history longer than 64 tokens then ranked differently from the trained model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bundle import Bundle, OnnxRunner, TextModelEntry, TextTokenizer
from service.app import create_app
from service.settings import ServiceSettings
from trie import SemanticIdTrie, constrained_beam_search


@pytest.fixture(scope="module")
def client(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    with TestClient(create_app(ServiceSettings(bundle_dir=bundle_dir, store_path=store, log_json=False))) as c:
        yield c


def _decode(bundle: Bundle, text: str, max_length: int, k: int) -> list[str]:
    """The recommender's top-k doc_ids for one input text, its input cut at `max_length` tokens."""
    entry = bundle.manifest.models["recommender"]
    assert isinstance(entry, TextModelEntry)
    runner = OnnxRunner(bundle.path(entry.encoder), bundle.path(entry.decoder_step),
                        TextTokenizer(bundle.path(bundle.manifest.tokenizer), max_length),
                        bundle.manifest.codebook_sizes, name="recommender")
    trie = SemanticIdTrie.load(bundle.trie_path)
    result = constrained_beam_search(runner.step_fn(runner.encode([text])), trie, num_queries=1, beam_size=20, top_k=k)
    doc_ids = bundle.documents().doc_ids
    return [doc_ids[int(row)] for row in result.rows[0, : int(result.counts[0])]]


def test_the_recommender_reads_its_history_cut_at_its_own_max_input_length(client: TestClient,
                                                                           bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    recommender = bundle.manifest.models["recommender"]
    indexer = bundle.manifest.models["indexer"]
    assert recommender.history is not None and recommender.max_input_length < indexer.max_input_length
    table = bundle.documents()
    history = table.doc_ids[:20]  # about 300 tokens of text: longer than either length
    text = recommender.history.text([table.texts[table.row_of_doc_id[d]] for d in history])
    trained = _decode(bundle, text, recommender.max_input_length, 10)
    cut_elsewhere = _decode(bundle, text, indexer.max_input_length, 10)
    assert trained != cut_elsewhere  # the length matters for this input, so the check below can fail

    served = client.post("/recommend", json={"history": history, "k": 10})
    assert served.status_code == 200, served.text
    assert [hit["doc_id"] for hit in served.json()["results"]] == trained


def test_only_the_manifests_newest_items_are_read(client: TestClient, bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    recommender = bundle.manifest.models["recommender"]
    assert recommender.history is not None and recommender.history.max_items == 20
    doc_ids = bundle.documents().doc_ids
    long = client.post("/recommend", json={"history": doc_ids[:30], "k": 5}).json()["results"]
    newest = client.post("/recommend", json={"history": doc_ids[10:30], "k": 5}).json()["results"]
    assert [h["doc_id"] for h in long] == [h["doc_id"] for h in newest]
