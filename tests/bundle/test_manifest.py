"""The typed manifest: what to_json writes from_json reads back; anything but the exact format is refused
with a message naming the key (a missing key, an unknown key, a wrong type, another format version)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bundle import (
    FORMAT_VERSION,
    MODEL_KINDS,
    Bundle,
    BundleError,
    BundleManifest,
    ItemTokenRecommenderEntry,
    SearchSettings,
    TextModelEntry,
    TextVectorSpec,
)
from tests.service.tiny_bundle import untrained_manifest

RECOMMENDER = ItemTokenRecommenderEntry(
    kind="item_token_recommender", sequence_model="recommender/sequence_model.onnx",
    decoder_step="recommender/decoder_step.onnx", dense_head="recommender/dense_head.onnx",
    hidden_size=16, max_history=20, beam_size=20, default_mode="hybrid", hybrid_weight=0.3, exclude_history=True,
    item_id_offsets=None, parity=None, evaluation={})
ITEM_VECTORS = TextVectorSpec(file="vectors/item_vectors.npy", dim=32, encoder="indexer network", max_input_length=48,
                              pooling="mean", normalized=True, source="indexer", text_encoder_file=None,
                              tokenizer_file=None, checked_items=0, max_abs_diff=0.0)
SEARCH = SearchSettings(default_mode="hybrid", hybrid_weight=0.2, dense_candidates=100, chosen_on="valid: 100 queries")


@pytest.fixture
def manifest() -> BundleManifest:
    return untrained_manifest(num_levels=2, codebook_size=16, counter_size=64, num_documents=10, hidden_size=32,
                              note="test", max_query_length=24, max_document_length=48, recommender=RECOMMENDER,
                              item_vectors=ITEM_VECTORS, search=SEARCH)


def _raw(manifest: BundleManifest) -> dict:
    return json.loads(manifest.to_json())


def test_to_json_and_from_json_round_trip(manifest: BundleManifest) -> None:
    again = BundleManifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.codebook_sizes == (16, 16, 64)
    assert {role: entry.max_input_length for role, entry in again.models.items() if role != "recommender"} == {
        "indexer": 48, "retriever": 24}
    assert again.models["recommender"] == RECOMMENDER
    assert again.item_vectors == ITEM_VECTORS and again.models["retriever"].search == SEARCH
    assert again.models["indexer"].search is None
    assert isinstance(again.models["retriever"], TextModelEntry) and MODEL_KINDS["text_to_id"] is TextModelEntry
    assert MODEL_KINDS["item_token_recommender"] is ItemTokenRecommenderEntry
    assert again.files()[-3:] == RECOMMENDER.files() and "vectors/item_vectors.npy" in again.files()


@pytest.mark.parametrize("path", [
    ("format_version",), ("semantic_ids",), ("semantic_ids", "counter_size"), ("models", "recommender", "max_history"),
    ("models", "retriever", "max_input_length"), ("models", "indexer", "int8_encoder"), ("training_config",),
    ("models", "retriever", "kind"), ("item_vectors", "pooling"), ("item_vectors", "file"), ("item_vectors",),
    ("models", "recommender", "default_mode"), ("models", "recommender", "hybrid_weight"),
    ("models", "retriever", "search"), ("models", "indexer", "search"),
    ("models", "retriever", "search", "default_mode"), ("models", "retriever", "search", "hybrid_weight"),
    ("models", "retriever", "search", "dense_candidates"), ("models", "retriever", "search", "chosen_on"),
])
def test_a_missing_key_is_refused_by_name(manifest: BundleManifest, path: tuple[str, ...]) -> None:
    raw = _raw(manifest)
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(BundleError, match=rf"manifest\.json: missing key '{'.'.join(path)}'"):
        BundleManifest.from_json(json.dumps(raw))


@pytest.mark.parametrize("path", [
    ("max_history_length",), ("models", "recommender", "max_history_length"), ("semantic_ids", "codebook_size"),
    ("item_vectors", "order_by"), ("models", "retriever", "history"), ("models", "recommender", "item_vectors"),
    ("models", "recommender", "text_vectors"), ("models", "retriever", "search", "rrf_k"),
])
def test_an_unknown_key_is_refused_by_name(manifest: BundleManifest, path: tuple[str, ...]) -> None:
    raw = _raw(manifest)
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = 1
    with pytest.raises(BundleError, match=rf"unknown key '{'.'.join(path)}'"):
        BundleManifest.from_json(json.dumps(raw))


@pytest.mark.parametrize("version", [1, 2, 3, 4, 6, "5", None])
def test_another_format_version_is_refused_naming_both(manifest: BundleManifest, version: object) -> None:
    raw = _raw(manifest)
    raw["format_version"] = version
    with pytest.raises(BundleError, match=rf"format_version {version!r} is not supported .*reads {FORMAT_VERSION}"):
        BundleManifest.from_json(json.dumps(raw))


def test_a_version_1_manifest_is_refused_for_its_version_not_its_keys() -> None:
    old = {"format_version": 1, "max_query_length": 64, "recommendation": {"max_history": 20}}
    with pytest.raises(BundleError, match="format_version 1 is not supported"):
        BundleManifest.from_json(json.dumps(old))


@pytest.mark.parametrize("path, value, message", [
    (("num_documents",), "10", "num_documents: expected an integer"),
    (("models", "retriever", "max_input_length"), True, "max_input_length: expected an integer"),
    (("models", "retriever", "pooling"), "mean", "pooling: 'mean' is not one of"),
    (("models", "retriever", "kind"), "item_sequence", "unknown model kind 'item_sequence'"),
    (("semantic_ids", "codebook_size_per_level"), [16], "must hold num_levels = 2 sizes"),
    (("models", "recommender", "default_mode"), "dense", "default_mode: 'dense' is not one of"),
    (("models", "recommender", "hybrid_weight"), 1.5, "hybrid_weight must be in"),
    (("item_vectors", "source"), "text_encoder", "text_encoder_file and tokenizer_file"),
    (("item_vectors", "max_input_length"), 64, "the indexer, which reads 48 tokens"),
    (("models", "retriever", "search", "default_mode"), "dense", "default_mode: 'dense' is not one of"),
    (("models", "retriever", "search", "hybrid_weight"), -0.1, "hybrid_weight must be in"),
    (("models", "retriever", "search", "dense_candidates"), 0, "dense_candidates must be >= 1"),
    (("models", "retriever", "search", "dense_candidates"), 1.5, "dense_candidates: expected an integer"),
    (("models", "retriever", "search"), None, "the retriever must have one"),
    (("models", "indexer", "search"), {"default_mode": "generative", "hybrid_weight": 0.0, "dense_candidates": 1,
                                       "chosen_on": None}, "models.indexer.search: the retriever must have one"),
])
def test_wrong_values_are_refused_by_name(manifest: BundleManifest, path: tuple[str, ...], value: object,
                                          message: str) -> None:
    raw = _raw(manifest)
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    with pytest.raises(BundleError, match=message):
        BundleManifest.from_json(json.dumps(raw))


def test_the_documents_vectors_are_required_by_a_recommender_and_by_default_hybrid_search(
        manifest: BundleManifest) -> None:
    raw = _raw(manifest)
    raw["item_vectors"] = None
    with pytest.raises(BundleError, match="item_vectors: the recommender reads"):
        BundleManifest.from_json(json.dumps(raw))
    del raw["models"]["recommender"]
    with pytest.raises(BundleError, match="default_mode: hybrid needs the documents' text vectors"):
        BundleManifest.from_json(json.dumps(raw))
    raw["models"]["retriever"]["search"]["default_mode"] = "generative"
    assert BundleManifest.from_json(json.dumps(raw)).item_vectors is None  # generative search needs none


def test_roles_are_checked(manifest: BundleManifest) -> None:
    raw = _raw(manifest)
    without_indexer = copy.deepcopy(raw)
    del without_indexer["models"]["indexer"]
    with pytest.raises(BundleError, match="the indexer model is required"):
        BundleManifest.from_json(json.dumps(without_indexer))
    text_recommender = copy.deepcopy(raw)
    text_recommender["models"]["recommender"] = raw["models"]["retriever"]
    with pytest.raises(BundleError, match="the recommender must be of kind 'item_token_recommender'"):
        BundleManifest.from_json(json.dumps(text_recommender))
    raw["models"]["ranker"] = raw["models"]["retriever"]
    with pytest.raises(BundleError, match="unknown model 'ranker'"):
        BundleManifest.from_json(json.dumps(raw))


def test_opening_a_bundle_checks_every_named_file(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    assert len(bundle.documents()) == bundle.manifest.num_documents and len(bundle.fingerprint) == 16
    (tmp_path / "manifest.json").write_text(bundle.manifest.to_json())
    with pytest.raises(BundleError, match=r"names .*tokenizer\.json, which does not exist"):
        Bundle.open(tmp_path)
    with pytest.raises(BundleError, match="not a bundle"):
        Bundle.open(tmp_path / "nothing")
