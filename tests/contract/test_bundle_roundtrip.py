"""The bundle contract (docs/bundle.md), end to end: export a tiny bundle with every model (indexer, retriever,
item-token recommender) with training's code, load it through bundle/ and through the service, and check
that the service answers what the export's parity check decoded for the same inputs (/search and /recommend,
both modes; /search hybrid: the bundle's rule, bundle.retrieval, applied to the parity decode's beam and
training's text vectors of the queries); that the ONNX graphs have the contract's signatures; that a new
document gets the ID torch and the counter rule give; and that a manifest with a missing key, an unknown key
or another format version stops `lmindexer serve`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import BertConfig, BertModel

from bundle import (
    Bundle,
    DenseIndex,
    History,
    OnnxRunner,
    RecommenderRunner,
    SearchSettings,
    hybrid_search,
    read_item_id_offsets,
    read_item_vectors,
    recommender_item_vectors,
)
from service.app import create_app
from service.settings import ServiceSettings
from training.data.amazon import items_as_documents, load_amazon
from training.downstream.cold_start import greedy_codes
from training.downstream.evaluate import Decoded, TorchModel, beam_search
from training.downstream.export import BundleModel, RecommenderModel, check_parity, export_bundle
from training.encoder import load_tokenizer, mean_pool
from training.indexing.network import NetworkConfig, SemanticIdNetwork
from training.recommendation import export as recommender_export
from training.recommendation.model import Recommender
from training.recommendation.settings import RecommenderSettings
from trie import SemanticIdTrie, constrained_beam_search, next_free_id

REPO = Path(__file__).resolve().parents[2]
QUERIES = [
    "nail polish in a bright red",
    "a shampoo for dry hair",
    "OPI Nail Lacquer",
    "title: Maybelline mascara, brand: Maybelline. title: eye liner pencil",
    "moisturizing face cream with SPF 30 for sensitive skin, fragrance free, dermatologist tested and approved",
    "perfume",
]
# Each model reads its own length: the service must cut every input where its model was trained.
LENGTHS = {"indexer": 32, "retriever": 20}
MAX_HISTORY = 3
# The retriever's search modes as its evaluation would have chosen them (hybrid by default): 15 dense candidates
# of the 60 documents beside the beam's 20.
SEARCH = SearchSettings(default_mode="hybrid", hybrid_weight=0.4, dense_candidates=15, chosen_on="contract test")
# Histories of 1 to 5 items (longer than max_history: the model reads the newest); rows, oldest first.
HISTORIES = [list(range(i, i + n)) for i, n in ((0, 1), (5, 2), (10, 3), (20, 5), (40, 4), (50, 2))]


def tiny_network(seed: int) -> SemanticIdNetwork:
    torch.manual_seed(seed)
    encoder = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    config = NetworkConfig(num_levels=2, codebook_size=16, counter_size=4, decoder_layers=1, decoder_heads=2,
                           decoder_ff_size=64)
    return SemanticIdNetwork(config, encoder=encoder).eval()


def item_vectors(network: SemanticIdNetwork, texts: list[str]) -> np.ndarray:
    """Training's text vectors for LMIndexer IDs: the indexer's encoder, mean-pooled and normalised."""
    tokenizer = load_tokenizer()
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=LENGTHS["indexer"], return_tensors="pt")
        states = network.encode(batch["input_ids"], batch["attention_mask"])
        return torch.nn.functional.normalize(mean_pool(states, batch["attention_mask"]), dim=-1).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict]:
    documents = items_as_documents(load_amazon())[:60]
    rng = np.random.default_rng(3)
    learned = rng.permutation(np.array([(a, b) for a in range(16) for b in range(16)]))[:50]
    learned = np.concatenate([learned, learned[:10]])
    ids = np.concatenate([learned, np.r_[np.zeros(50), np.ones(10)][:, None]], axis=1).astype(np.int64)
    networks: dict = {"indexer": tiny_network(1), "retriever": tiny_network(2)}
    texts = [d.text for d in documents]
    models = {name: BundleModel(network, texts[:30], LENGTHS[name], search=SEARCH if name == "retriever" else None)
              for name, network in networks.items()}
    torch.manual_seed(4)
    # with item ID embeddings: the export moves them into the text space (item_id_offsets), the service adds them
    settings = RecommenderSettings(d_model=16, num_heads=2, num_layers=1, max_history=MAX_HISTORY, dropout=0.0,
                                   item_id_embedding=True)
    networks["recommender"] = Recommender(32, (16, 16, 4), settings, num_items=len(documents)).eval()
    recommender = RecommenderModel(
        model=networks["recommender"], vectors=item_vectors(networks["indexer"], texts),
        parity_histories=[np.asarray(h) for h in HISTORIES], beam_size=20, default_mode="hybrid", hybrid_weight=0.4,
        exclude_history=True, text_encoder="the indexer network's encoder", text_max_length=LENGTHS["indexer"])
    out = tmp_path_factory.mktemp("contract") / "bundle"
    export_bundle(out, models, documents, ids, load_tokenizer(), encoder="all-MiniLM-L6-v2", recommender=recommender)
    return out, networks


@pytest.fixture(scope="module")
def client(exported, tmp_path_factory) -> Iterator[TestClient]:
    bundle, _ = exported
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    # fp32 indexer: the int8 encoder, when the export writes one, may pick other codes by design.
    settings = ServiceSettings(bundle_dir=bundle, store_path=store, log_json=False, indexer_precision="fp32")
    with TestClient(create_app(settings)) as c:
        yield c


def _parity_decode(bundle: Bundle, networks: dict[str, SemanticIdNetwork], name: str,
                   texts: list[str], top_k: int = 10) -> Decoded:
    """What the export's parity check decodes for `texts`: the top_k (Q, top_k, L+1) semantic IDs, their summed
    log-probabilities, trie rows and counts."""
    entry = bundle.manifest.models[name]
    torch_model = TorchModel(networks[name], load_tokenizer(), max_length=entry.max_input_length, device="cpu")
    figures, decoded = check_parity(torch_model, OnnxRunner.for_model(bundle, name), texts,
                                    SemanticIdTrie.load(bundle.trie_path), tolerance=1e-4, beam_size=entry.beam_size,
                                    top_k=top_k)
    assert figures.top_k_identical and figures.tokens_identical and figures.max_abs_diff <= 1e-4
    return decoded


def test_the_manifest_records_every_model_and_its_input_settings(exported) -> None:
    bundle = Bundle.open(exported[0])
    manifest = bundle.manifest
    assert manifest.format_version == 5 and manifest.codebook_sizes == (16, 16, 4)
    text_models = {name: entry for name, entry in manifest.models.items() if name != "recommender"}
    assert {name: entry.max_input_length for name, entry in text_models.items()} == LENGTHS
    recommender = manifest.models["recommender"]
    assert recommender.kind == "item_token_recommender" and recommender.max_history == MAX_HISTORY
    assert (recommender.default_mode, recommender.hybrid_weight, recommender.exclude_history) == ("hybrid", 0.4, True)
    assert recommender.parity is not None and recommender.parity.top_k_identical
    assert recommender.parity.max_abs_diff <= 1e-4 and recommender.parity.inputs == len(HISTORIES)
    assert manifest.item_vectors is not None and manifest.item_vectors.source == "indexer"
    assert manifest.item_vectors.max_abs_diff <= 1e-3 and manifest.item_vectors.max_input_length == LENGTHS["indexer"]
    assert read_item_vectors(bundle).shape == (60, 32)
    assert recommender.item_id_offsets is not None and read_item_id_offsets(bundle).shape == (60, 32)
    assert manifest.models["retriever"].search == SEARCH and manifest.models["indexer"].search is None
    for entry in text_models.values():
        assert entry.kind == "text_to_id" and entry.beam_size == 20 and entry.pooling == "cross_attention"
        assert entry.parity is not None and entry.parity.top_k_identical and entry.parity.inputs == 30
    assert manifest.models["indexer"].int8_encoder is not None  # measured, written or not


def test_graphs_have_the_signatures_of_the_contract(exported) -> None:
    bundle = Bundle.open(exported[0])
    for name, entry in bundle.manifest.models.items():
        if name == "recommender":
            continue
        int8 = entry.int8_encoder.file if entry.int8_encoder is not None else None
        # The int8 encoder (indexer only) has the fp32 encoder's signature: int8 weights, float32 states.
        for encoder_file in (entry.encoder, int8) if int8 else (entry.encoder,):
            encoder = onnxruntime.InferenceSession(str(bundle.path(encoder_file)), providers=["CPUExecutionProvider"])
            assert [(i.name, i.type, len(i.shape)) for i in encoder.get_inputs()] == [
                ("input_ids", "tensor(int64)", 2), ("attention_mask", "tensor(int64)", 2)]
            assert [(o.name, o.type, len(o.shape)) for o in encoder.get_outputs()] == [
                ("encoder_states", "tensor(float)", 3)]
        step = onnxruntime.InferenceSession(str(bundle.path(entry.decoder_step)), providers=["CPUExecutionProvider"])
        assert [(i.name, i.type, len(i.shape)) for i in step.get_inputs()] == [
            ("encoder_states", "tensor(float)", 3), ("attention_mask", "tensor(int64)", 2),
            ("codes", "tensor(int64)", 3), ("level", "tensor(int64)", 0)]
        assert [(o.name, o.type, len(o.shape)) for o in step.get_outputs()] == [("log_probs", "tensor(float)", 3)]
        assert entry.hidden_size == 32, name


def test_the_recommenders_graphs_have_the_signatures_of_the_contract(exported) -> None:
    bundle = Bundle.open(exported[0])
    entry = bundle.manifest.models["recommender"]

    def signature(file: str) -> tuple[list, list]:
        session = onnxruntime.InferenceSession(str(bundle.path(file)), providers=["CPUExecutionProvider"])
        return ([(i.name, i.type, len(i.shape)) for i in session.get_inputs()],
                [(o.name, o.type, len(o.shape)) for o in session.get_outputs()])

    assert signature(entry.sequence_model) == (
        [("vectors", "tensor(float)", 3), ("codes", "tensor(int64)", 3), ("padding", "tensor(bool)", 2)],
        [("hidden", "tensor(float)", 2)])
    assert signature(entry.decoder_step) == (
        [("hidden", "tensor(float)", 2), ("codes", "tensor(int64)", 3), ("level", "tensor(int64)", 0)],
        [("log_probs", "tensor(float)", 3)])
    assert signature(entry.dense_head) == (
        [("hidden", "tensor(float)", 2), ("vectors", "tensor(float)", 3), ("codes", "tensor(int64)", 3)],
        [("scores", "tensor(float)", 2)])


@pytest.mark.parametrize("name", ["retriever"])
def test_the_bundle_runner_decodes_what_the_torch_model_decodes(exported, name) -> None:
    bundle_dir, networks = exported
    bundle = Bundle.open(bundle_dir)
    runner = OnnxRunner.for_model(bundle, name)
    trie = SemanticIdTrie.load(bundle.trie_path)
    got = constrained_beam_search(runner.step_fn(runner.encode(QUERIES)), trie, num_queries=len(QUERIES),
                                  beam_size=20, top_k=10)
    torch_model = TorchModel(networks[name], load_tokenizer(), max_length=LENGTHS[name], device="cpu")
    want = beam_search(torch_model, QUERIES, trie, beam_size=20, top_k=10)
    np.testing.assert_array_equal(got.semantic_ids, want.semantic_ids)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-3)
    assert (got.counts == 10).all()
    table = bundle.documents()  # the documents.jsonl line of each row holds that row's ID
    for q in range(len(QUERIES)):
        np.testing.assert_array_equal(table.semantic_ids[got.rows[q]], got.semantic_ids[q])


def test_search_answers_what_the_parity_check_decoded(exported, client) -> None:
    bundle_dir, networks = exported
    decoded = _parity_decode(Bundle.open(bundle_dir), networks, "retriever", QUERIES)
    for q, query in enumerate(QUERIES):
        response = client.post("/search", json={"query": query, "k": 10, "mode": "generative"})
        assert response.status_code == 200, response.text
        assert [hit["semantic_id"] for hit in response.json()["results"]] == decoded.semantic_ids[q].tolist(), query


@pytest.mark.parametrize("mode", ["hybrid", None])
def test_hybrid_search_answers_the_bundle_rule_on_the_parity_decode_and_trainings_vectors(exported, client,
                                                                                          mode) -> None:
    """The beam's candidates and their log-probabilities from the export's parity decode (every complete ID of
    the beam), the queries' text vectors from training's encoder (the indexer network, mean-pooled), the
    documents' from the bundle: bundle.retrieval's rule gives what /search answers (the default mode here)."""
    bundle_dir, networks = exported
    bundle = Bundle.open(bundle_dir)
    entry = bundle.manifest.models["retriever"]
    decoded = _parity_decode(bundle, networks, "retriever", QUERIES, top_k=entry.beam_size)
    beam_rows = np.where(np.arange(decoded.rows.shape[1])[None, :] < decoded.counts[:, None], decoded.rows, -1)
    want = hybrid_search(beam_rows, decoded.scores, item_vectors(networks["indexer"], QUERIES),
                         DenseIndex.build(read_item_vectors(bundle)), weight=SEARCH.hybrid_weight,
                         dense_candidates=SEARCH.dense_candidates, top_k=10)
    doc_ids = bundle.documents().doc_ids
    for q, query in enumerate(QUERIES):
        response = client.post("/search", json={"query": query, "k": 10, **({"mode": mode} if mode else {})})
        assert response.status_code == 200, response.text
        hits = response.json()["results"]
        assert [hit["doc_id"] for hit in hits] == [doc_ids[r] for r in want.rows[q, : want.counts[q]]], query
        np.testing.assert_allclose([hit["score"] for hit in hits], want.scores[q, : want.counts[q]], atol=1e-5)
    # the two modes differ: hybrid reads documents the beam never reached
    generative = client.post("/search", json={"query": QUERIES[0], "k": 10, "mode": "generative"}).json()
    hybrid = client.post("/search", json={"query": QUERIES[0], "k": 10, "mode": "hybrid"}).json()
    assert [h["doc_id"] for h in generative["results"]] != [h["doc_id"] for h in hybrid["results"]]


@pytest.mark.parametrize("mode", ["generative", "hybrid", None])
def test_recommend_answers_what_the_parity_check_decoded(exported, client, mode) -> None:
    bundle_dir, networks = exported
    bundle = Bundle.open(bundle_dir)
    entry = bundle.manifest.models["recommender"]
    table = bundle.documents()
    plain = read_item_vectors(bundle)
    vectors = recommender_item_vectors(lambda rows: plain[rows], read_item_id_offsets(bundle))  # as the service
    trie = SemanticIdTrie.load(bundle.trie_path)
    histories = [History(vectors(np.asarray(h)), table.semantic_ids[h]) for h in HISTORIES]
    # the offsets are the model's own item embeddings: text vector + offset gives the token with the embedding
    model = networks["recommender"]
    rows = torch.arange(1, 61)
    with torch.no_grad():
        want = model.item_tokens(torch.from_numpy(plain), torch.zeros(60, 3, dtype=torch.long), rows)
        got = model.item_tokens(torch.from_numpy(vectors(np.arange(60))), torch.zeros(60, 3, dtype=torch.long))
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, want - model.item_embedding(rows))
    figures, decoded = recommender_export.check_parity(
        networks["recommender"], RecommenderRunner.for_bundle(bundle), histories, trie, vectors,
        tolerance=1e-4, beam_size=entry.beam_size, hybrid_weight=entry.hybrid_weight, exclude_history=True)
    assert figures.top_k_identical and figures.max_abs_diff <= 1e-4
    ranking = decoded[mode or entry.default_mode]
    for h, history in enumerate(HISTORIES):
        body = {"history": [table.doc_ids[r] for r in history], "k": 10, **({"mode": mode} if mode else {})}
        response = client.post("/recommend", json=body)
        assert response.status_code == 200, response.text
        want = ranking.semantic_ids[h, : int(ranking.counts[h])].tolist()
        assert [hit["semantic_id"] for hit in response.json()["results"]] == want, history


def test_a_new_document_gets_the_id_of_the_torch_indexer_and_the_counter_rule(exported, client) -> None:
    bundle_dir, networks = exported
    bundle = Bundle.open(bundle_dir)
    trie = SemanticIdTrie.load(bundle.trie_path)
    new_texts = ["title: a brand new lip gloss, brand: Nobody, category: Beauty, Makeup, Lips",
                 "title: argan oil hair serum"]
    torch_model = TorchModel(networks["indexer"], load_tokenizer(), max_length=LENGTHS["indexer"], device="cpu")
    codes, ranked = greedy_codes(torch_model, new_texts)
    expected = []
    for i in range(len(new_texts)):
        expected.append(next_free_id(trie, codes[i].tolist(), ranked[i].tolist(), set(expected)))
    response = client.post("/index-documents", json={"documents": [
        {"doc_id": f"NEW-{i}", "text": text} for i, text in enumerate(new_texts)]})
    assert response.status_code == 200, response.text
    assert [tuple(d["semantic_id"]) for d in response.json()["documents"]] == expected


def _serve(bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmindexer", "serve", "--bundle", str(bundle), "--port", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("edit, names", [
    (lambda raw: raw["models"]["recommender"].pop("max_history"),
     "missing key 'models.recommender.max_history'"),
    (lambda raw: raw.update(max_history_length=128), "unknown key 'max_history_length'"),
    (lambda raw: raw["models"]["indexer"].update(encoder_int8="indexer/encoder.onnx"),
     "unknown key 'models.indexer.encoder_int8'"),
    (lambda raw: raw.update(format_version=1), "format_version 1 is not supported"),
])
def test_serve_refuses_a_manifest_off_the_format_naming_why(exported, tmp_path: Path, edit, names: str) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(exported[0], bundle)
    raw = json.loads((bundle / "manifest.json").read_text())
    edit(raw)
    (bundle / "manifest.json").write_text(json.dumps(raw))
    result = _serve(bundle, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert names in result.stderr and "Traceback" not in result.stderr
