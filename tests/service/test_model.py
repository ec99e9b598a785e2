"""The bundle's ONNX runner under the service's beam search: batching must not change any query's answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bundle import Bundle, OnnxRunner, TextTokenizer, choose_providers
from service.engine import ModelRanker
from service.index import LiveIndex
from service.store import DocumentStore
from service.telemetry import Metrics
from trie import SemanticIdTrie


@pytest.fixture(scope="module")
def ranker(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelRanker:
    bundle = Bundle.open(bundle_dir)
    table = bundle.documents()
    store = DocumentStore(tmp_path_factory.mktemp("m") / "s.sqlite3", bundle_fingerprint=bundle.fingerprint,
                          first_row=len(table), index_version=0)
    index = LiveIndex(table, SemanticIdTrie.load(bundle.trie_path), store)
    model = OnnxRunner.for_model(bundle, "retriever", providers=choose_providers("cpu"), intra_op_threads=1)
    return ModelRanker({"retriever": model}, index, Metrics(), beam_size=8, batch_max_size=32,
                       batch_max_wait_s=0.0, queue_max_depth=8)


QUERIES = ["vegan lavender serum", "matte red lipstick", "charcoal scrub for oily skin",
           "a much longer query about argan oil shampoo for dry and damaged hair", "mint"]


def _ids(ranking) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    return [(hit["doc_id"], round(hit["score"], 4)) for hit in json.loads(ranking.results_json)]


def test_batched_queries_get_the_answers_they_get_alone(ranker: ModelRanker) -> None:
    alone = [_ids(ranker.rank_now("retriever", [(q, 5)])[0]) for q in QUERIES]
    together = [_ids(r) for r in ranker.rank_now("retriever", [(q, 5) for q in QUERIES])]
    assert [[d for d, _ in hits] for hits in together] == [[d for d, _ in hits] for hits in alone]
    # Padding to the batch's longest text changes float rounding, nothing more.
    np.testing.assert_allclose([[s for _, s in h] for h in together], [[s for _, s in h] for h in alone], atol=1e-3)
    assert all(len(a) == 5 for a in alone)


def test_k_above_the_beam_widens_the_beam_for_that_query_only(ranker: ModelRanker) -> None:
    mixed = ranker.rank_now("retriever", [(QUERIES[0], 30), (QUERIES[1], 5)])
    assert len(json.loads(mixed[0].results_json)) == 30
    assert _ids(mixed[1]) == _ids(ranker.rank_now("retriever", [(QUERIES[1], 5)])[0])


def test_results_are_valid_documents_in_score_order(ranker: ModelRanker) -> None:
    (ranking,) = ranker.rank_now("retriever", [("rose toner", 10)])
    hits = json.loads(ranking.results_json)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
    assert len({h["doc_id"] for h in hits}) == len(hits)


def test_tokenizer_pads_to_the_longest_and_truncates(bundle_dir: Path) -> None:
    tokenizer = TextTokenizer(Bundle.open(bundle_dir).path("tokenizer.json"), 8)
    ids, mask = tokenizer.encode(["short", "a much longer text than eight tokens for sure, really"])
    assert ids.shape == mask.shape == (2, 8)
    assert mask[0].sum() == 3 and mask[1].sum() == 8  # [CLS] short [SEP]; truncated to 8
    assert ids[1, -1] == 102  # [SEP] kept at the end after truncation


def test_greedy_codes_in_length_sorted_chunks_match_one_by_one(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    model = OnnxRunner.for_model(bundle, "indexer", intra_op_threads=1)
    texts = [*QUERIES, "x", "a fairly long document text " * 5]
    codes, ranked = model.greedy_codes(texts, 4, chunk_size=3)
    for i, text in enumerate(texts):
        alone_codes, alone_ranked = model.greedy_codes([text], 4)
        assert codes[i].tolist() == alone_codes[0].tolist()
        assert ranked[i, 0] == codes[i, -1] and ranked[i].tolist() == alone_ranked[0].tolist()
