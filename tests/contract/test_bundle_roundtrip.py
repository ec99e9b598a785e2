"""The bundle contract (docs/bundle.md), end to end: export a tiny bundle with training's code, then
load it the way the service does — json + tokenizers + onnxruntime + trie, no torch and no training
code on the serving side — and check that fixed queries give the same top-k as the torch model, and
that a new document gets the same ID through the indexer graphs as through torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from tokenizers import Tokenizer
from transformers import BertConfig, BertModel

from training.data.amazon import items_as_documents, load_amazon
from training.downstream.cold_start import greedy_codes
from training.downstream.evaluate import TorchModel, beam_search
from training.downstream.export import BundleModel, export_bundle
from training.encoder import load_tokenizer
from training.indexing.network import NetworkConfig, SemanticIdNetwork
from trie import SemanticIdTrie, constrained_beam_search

QUERIES = [
    "nail polish in a bright red",
    "a shampoo for dry hair",
    "OPI Nail Lacquer",
    "title: Maybelline mascara, brand: Maybelline. title: eye liner pencil",
    "moisturizing face cream with SPF 30 for sensitive skin, fragrance free, dermatologist tested and approved",
    "perfume",
]


def tiny_network(seed: int) -> SemanticIdNetwork:
    torch.manual_seed(seed)
    encoder = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    config = NetworkConfig(num_levels=2, codebook_size=16, counter_size=4, decoder_layers=1, decoder_heads=2,
                           decoder_ff_size=64)
    return SemanticIdNetwork(config, encoder=encoder).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict[str, SemanticIdNetwork], list]:
    documents = items_as_documents(load_amazon())[:60]
    rng = np.random.default_rng(3)
    learned = rng.permutation(np.array([(a, b) for a in range(16) for b in range(16)]))[:50]
    learned = np.concatenate([learned, learned[:10]])
    ids = np.concatenate([learned, np.r_[np.zeros(50), np.ones(10)][:, None]], axis=1).astype(np.int64)
    networks = {"indexer": tiny_network(1), "retriever": tiny_network(2), "recommender": tiny_network(3)}
    texts = [d.text for d in documents]
    models = {name: BundleModel(network, texts[:30], 32) for name, network in networks.items()}
    out = tmp_path_factory.mktemp("contract") / "bundle"
    export_bundle(out, models, documents, ids, load_tokenizer(), encoder="all-MiniLM-L6-v2", max_query_length=32,
                  max_document_length=32)
    return out, networks, documents


class ServedModel:
    """A model loaded only from the bundle, as docs/bundle.md describes it."""

    def __init__(self, bundle: Path, manifest: dict, name: str, max_length: int) -> None:
        spec = manifest["models"][name]
        self.encoder = onnxruntime.InferenceSession(str(bundle / spec["encoder"]), providers=["CPUExecutionProvider"])
        self.step = onnxruntime.InferenceSession(str(bundle / spec["decoder_step"]),
                                                 providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(bundle / manifest["tokenizer"]))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
        self.sizes = manifest["semantic_ids"]["codebook_sizes"]
        self.num_levels = manifest["semantic_ids"]["num_levels"]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)  # adds [CLS] / [SEP] itself
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        states = self.encoder.run(["encoder_states"], {"input_ids": ids, "attention_mask": mask})[0]
        return states, mask

    def step_fn(self, states: np.ndarray, mask: np.ndarray):
        """The trie step function, written from the contract alone: one (B, W, L) call per level."""
        def step(level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
            queries = np.unique(query_index)
            width = max(int((query_index == q).sum()) for q in queries)
            codes = np.zeros((len(queries), width, self.num_levels), dtype=np.int64)
            where = []
            for b, q in enumerate(queries):
                for w, i in enumerate(np.flatnonzero(query_index == q)):
                    codes[b, w, :level] = prefixes[i]
                    where.append((i, b, w))
            feed = {"encoder_states": states[queries], "attention_mask": mask[queries], "codes": codes,
                    "level": np.array(level, dtype=np.int64)}
            log_probs = self.step.run(["log_probs"], feed)[0]
            out = np.empty((len(query_index), self.sizes[level]), dtype=np.float32)
            for i, b, w in where:
                out[i] = log_probs[b, w, : self.sizes[level]]
            return out
        return step


def test_graphs_have_the_signatures_of_the_contract(exported) -> None:
    bundle, _, _ = exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert "encoder_int8" in manifest["models"]["indexer"]  # the optional int8 indexer encoder, written by default
    for name in ("indexer", "retriever", "recommender"):
        spec = manifest["models"][name]
        # The int8 encoder (indexer only) has the fp32 encoder's signature: int8 weights, float32 states.
        for encoder_key in ("encoder", "encoder_int8") if name == "indexer" else ("encoder",):
            encoder = onnxruntime.InferenceSession(str(bundle / spec[encoder_key]), providers=["CPUExecutionProvider"])
            assert [(i.name, i.type, len(i.shape)) for i in encoder.get_inputs()] == [
                ("input_ids", "tensor(int64)", 2), ("attention_mask", "tensor(int64)", 2)]
            assert [(o.name, o.type, len(o.shape)) for o in encoder.get_outputs()] == [
                ("encoder_states", "tensor(float)", 3)]
        step = onnxruntime.InferenceSession(str(bundle / spec["decoder_step"]), providers=["CPUExecutionProvider"])
        assert [(i.name, i.type, len(i.shape)) for i in step.get_inputs()] == [
            ("encoder_states", "tensor(float)", 3), ("attention_mask", "tensor(int64)", 2),
            ("codes", "tensor(int64)", 3), ("level", "tensor(int64)", 0)]
        assert [(o.name, o.type, len(o.shape)) for o in step.get_outputs()] == [("log_probs", "tensor(float)", 3)]
        assert manifest["models"][name]["hidden_size"] == 32
        assert manifest["onnx_parity"][name]["top10_identical"]


@pytest.mark.parametrize("name", ["retriever", "recommender"])
def test_served_top_k_equals_the_torch_model(exported, name) -> None:
    bundle, networks, _ = exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    served = ServedModel(bundle, manifest, name, manifest["max_query_length"])
    trie = SemanticIdTrie.load(bundle / manifest["trie"])
    documents = [json.loads(line) for line in (bundle / manifest["documents"]).read_text().splitlines()]
    states, mask = served.encode(QUERIES)
    got = constrained_beam_search(served.step_fn(states, mask), trie, num_queries=len(QUERIES), beam_size=20,
                                  top_k=10)
    torch_model = TorchModel(networks[name], load_tokenizer(), max_length=manifest["max_query_length"], device="cpu")
    want = beam_search(torch_model, QUERIES, trie, beam_size=20, top_k=10)
    np.testing.assert_array_equal(got.semantic_ids, want.semantic_ids)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-3)
    assert (got.counts == 10).all()
    for q in range(len(QUERIES)):  # the documents.jsonl line of each row holds that row's ID
        for row, semantic_id in zip(got.rows[q], got.semantic_ids[q], strict=True):
            assert documents[row]["semantic_id"] == semantic_id.tolist()


def test_a_new_document_gets_the_same_id_through_the_indexer_graphs(exported) -> None:
    bundle, networks, _ = exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    served = ServedModel(bundle, manifest, "indexer", manifest["max_document_length"])
    trie = SemanticIdTrie.load(bundle / manifest["trie"])
    new_texts = ["title: a brand new lip gloss, brand: Nobody, category: Beauty, Makeup, Lips",
                 "title: argan oil hair serum"]
    states, mask = served.encode(new_texts)
    codes = np.zeros((len(new_texts), 1, served.num_levels), dtype=np.int64)
    for level in range(served.num_levels):  # greedy argmax per learned level, W = 1
        log_probs = served.step.run(["log_probs"], {"encoder_states": states, "attention_mask": mask,
                                                    "codes": codes, "level": np.array(level, dtype=np.int64)})[0]
        codes[:, 0, level] = log_probs[:, 0, : served.sizes[level]].argmax(-1)
    torch_model = TorchModel(networks["indexer"], load_tokenizer(), max_length=manifest["max_document_length"],
                             device="cpu")
    np.testing.assert_array_equal(codes[:, 0], greedy_codes(torch_model, new_texts, served.sizes))
    counter = trie.next_counter(tuple(int(c) for c in codes[0, 0]))
    taken = {tuple(d["semantic_id"]) for d in
             (json.loads(line) for line in (bundle / "documents.jsonl").read_text().splitlines())}
    assert (*codes[0, 0].tolist(), counter) not in taken
    assert counter == min(c for c in range(manifest["semantic_ids"]["counter_size"])
                          if (*codes[0, 0].tolist(), c) not in taken)
