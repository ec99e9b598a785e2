"""Export: a bundle exactly as docs/bundle.md says, written only when ONNX parity holds."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

import training.downstream.export as export_module
from bundle import FORMAT_VERSION, Bundle, OnnxRunner, SearchSettings, read_item_vectors
from training.data.amazon import items_as_documents, load_amazon
from training.downstream.cold_start import greedy_codes
from training.downstream.export import BundleModel, ParityError, export_bundle
from training.encoder import load_tokenizer
from training.indexing.network import NetworkConfig, SemanticIdNetwork
from trie import DuplicateSemanticIdError, SemanticIdTrie


def tiny_network(seed: int) -> SemanticIdNetwork:
    torch.manual_seed(seed)
    encoder = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    config = NetworkConfig(num_levels=2, codebook_size=8, counter_size=4, decoder_layers=1, decoder_heads=2,
                           decoder_ff_size=64)
    return SemanticIdNetwork(config, encoder=encoder).eval()


@pytest.fixture(scope="module")
def corpus():
    documents = items_as_documents(load_amazon())[:40]
    rng = np.random.default_rng(0)
    learned = rng.permutation(np.array([(a, b) for a in range(8) for b in range(8)]))[:30]
    learned = np.concatenate([learned, learned[:10]])  # 10 collisions -> counter 1
    ids = np.concatenate([learned, np.r_[np.zeros(30), np.ones(10)][:, None]], axis=1).astype(np.int64)
    return documents, ids


def _export(out: Path, corpus, **kwargs):
    documents, ids = corpus
    texts = [d.text for d in documents]
    titles = [str(d.metadata["title"]) for d in documents]
    models = {"indexer": BundleModel(tiny_network(1), texts[:20], 48),
              "retriever": BundleModel(tiny_network(2), titles[:20], 24, beam_size=12)}
    return export_bundle(out, models, documents, ids, load_tokenizer(), encoder="all-MiniLM-L6-v2",
                         evaluation={"retriever": {"ndcg@10": 0.5}}, training_config={"note": "test"},
                         **kwargs).to_dict()


def test_export_writes_the_bundle_of_the_contract(tmp_path: Path, corpus) -> None:
    documents, ids = corpus
    out = tmp_path / "bundle"
    manifest = _export(out, corpus)
    assert sorted(p.name for p in out.iterdir()) == ["documents.jsonl", "indexer", "manifest.json", "retriever",
                                                    "tokenizer.json", "trie.bin", "vectors"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["format_version"] == FORMAT_VERSION == 5
    assert manifest["semantic_ids"] == {"num_levels": 2, "codebook_size_per_level": [8, 8], "counter_size": 4}
    entries = {name: dict(entry) for name, entry in manifest["models"].items()}
    agreement = entries["indexer"]["int8_encoder"]["agreement"]
    parity = {name: entry.pop("parity") for name, entry in entries.items()}
    assert entries == {
        "indexer": {"kind": "text_to_id", "encoder": "indexer/encoder.onnx",
                    "decoder_step": "indexer/decoder_step.onnx", "hidden_size": 32, "max_input_length": 48,
                    "pooling": "cross_attention", "beam_size": 20, "evaluation": {}, "search": None,
                    "int8_encoder": {"file": "indexer/encoder.int8.onnx", "agreement": agreement, "skipped": None}},
        "retriever": {"kind": "text_to_id", "encoder": "retriever/encoder.onnx",
                      "decoder_step": "retriever/decoder_step.onnx", "hidden_size": 32, "max_input_length": 24,
                      "pooling": "cross_attention", "beam_size": 12, "int8_encoder": None,
                      # no search modes chosen on data were given: generative, recorded as not chosen
                      "search": {"default_mode": "generative", "hybrid_weight": 0.5, "dense_candidates": 100,
                                 "chosen_on": None},
                      "evaluation": {"ndcg@10": 0.5}},
    }

    # The int8 indexer encoder: measured on the indexer's 20 parity inputs, above the default minimum.
    assert agreement["inputs"] == 20 and len(agreement["per_level"]) == 2
    assert 0.9 <= agreement["prefix"] <= min(agreement["per_level"]) <= 1.0
    assert agreement["min_prefix_agreement"] == 0.9 and agreement["weight_type"] == "QInt8"
    assert sorted(p.name for p in (out / "indexer").iterdir()) == ["decoder_step.onnx", "encoder.int8.onnx",
                                                                   "encoder.onnx"]
    assert sorted(p.name for p in (out / "retriever").iterdir()) == ["decoder_step.onnx", "encoder.onnx"]
    assert manifest["num_documents"] == 40 and manifest["index_version"] == 0
    assert manifest["training_config"] == {"note": "test"}
    assert manifest["created_at"].endswith("Z")
    for name, beam_size in (("indexer", 20), ("retriever", 12)):
        figures = parity[name]
        assert figures["max_abs_diff"] <= 1e-4 and figures["top_k_identical"] and figures["tokens_identical"]
        assert (figures["inputs"], figures["beam_size"], figures["top_k"], figures["tolerance"]) == (20, beam_size, 10,
                                                                                                   1e-4)
    lines = [json.loads(line) for line in (out / "documents.jsonl").read_text().splitlines()]
    trie = SemanticIdTrie.load(out / "trie.bin")
    assert trie.codebook_sizes == (8, 8, 4) and len(trie) == 40
    for row, (line, document) in enumerate(zip(lines, documents, strict=True)):
        assert line["doc_id"] == document.doc_id and line["text"] == document.text
        assert line["semantic_id"] == ids[row].tolist()
        assert trie.row_of(tuple(line["semantic_id"])) == row
        assert line["metadata"]["title"] == document.metadata["title"]
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"
    # Without a recommender the documents' text vectors come from the indexer network's encoder, mean-pooled:
    # what the bundle's indexer encoder gives the service for a new document (and a query).
    vectors = manifest["item_vectors"]
    assert (vectors["file"], vectors["dim"], vectors["source"], vectors["max_input_length"]) == (
        "vectors/item_vectors.npy", 32, "indexer", 48)
    assert vectors["checked_items"] == 40 and vectors["max_abs_diff"] <= 1e-3
    bundle = Bundle.open(out)
    served = OnnxRunner.for_model(bundle, "indexer").mean_vectors([d.text for d in documents])
    np.testing.assert_allclose(read_item_vectors(bundle), served, atol=1e-5)


def test_the_retrievers_search_modes_are_recorded_as_chosen(tmp_path: Path, corpus) -> None:
    documents, ids = corpus
    search = SearchSettings(default_mode="hybrid", hybrid_weight=0.3, dense_candidates=50,
                            chosen_on="beauty-titles valid split: 20 queries, NDCG@10")
    models = {"indexer": BundleModel(tiny_network(1), [d.text for d in documents][:10], 48),
              "retriever": BundleModel(tiny_network(2), [str(d.metadata["title"]) for d in documents][:10], 24,
                                       search=search)}
    manifest = export_bundle(tmp_path / "bundle", models, documents, ids, load_tokenizer(), encoder="all-MiniLM-L6-v2",
                             indexer_int8=False)
    assert manifest.models["retriever"].search == search and manifest.models["indexer"].search is None
    assert Bundle.open(tmp_path / "bundle").manifest == manifest


def _greedy_codes(bundle: Path, int8: bool, texts: list[str]) -> np.ndarray:
    """(N, L) greedy learned codes through the bundle's indexer with the fp32 or int8 encoder graph."""
    runner = OnnxRunner.for_model(Bundle.open(bundle), "indexer", int8=int8)
    return greedy_codes(runner, texts, alternatives=1, batch_size=25)[0]


def test_int8_agreement_is_what_the_graphs_give(tmp_path: Path, corpus) -> None:
    documents, _ = corpus
    out = tmp_path / "bundle"
    agreement = _export(out, corpus)["models"]["indexer"]["int8_encoder"]["agreement"]
    texts = [d.text for d in documents][:20]  # the indexer's parity inputs
    fp32 = _greedy_codes(out, False, texts)
    int8 = _greedy_codes(out, True, texts)
    assert agreement["prefix"] == round(float((fp32 == int8).all(axis=1).mean()), 4)
    assert agreement["per_level"] == [round(float(v), 4) for v in (fp32 == int8).mean(axis=0)]


def test_int8_encoder_below_the_minimum_agreement_is_not_written(tmp_path: Path, corpus) -> None:
    out = tmp_path / "bundle"
    manifest = _export(out, corpus, indexer_int8_min_agreement=1.01)
    int8 = manifest["models"]["indexer"]["int8_encoder"]
    assert int8["file"] is None
    assert "below the minimum 1.01" in int8["skipped"]
    assert int8["agreement"]["min_prefix_agreement"] == 1.01 and int8["agreement"]["inputs"] == 20
    assert sorted(p.name for p in (out / "indexer").iterdir()) == ["decoder_step.onnx", "encoder.onnx"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging directory left behind


def test_int8_encoder_can_be_turned_off(tmp_path: Path, corpus) -> None:
    out = tmp_path / "bundle"
    int8 = _export(out, corpus, indexer_int8=False)["models"]["indexer"]["int8_encoder"]
    assert int8["file"] is None and int8["agreement"] is None
    assert "disabled" in int8["skipped"]
    assert not (out / "indexer" / "encoder.int8.onnx").exists()


def test_a_bundle_that_fails_parity_is_not_written(tmp_path: Path, corpus, monkeypatch) -> None:
    real_export = export_module.export_onnx

    def tampered_export(network: SemanticIdNetwork, directory: Path) -> dict[str, str]:
        # The graphs come from weights that differ from the torch model that parity compares against.
        tampered = copy.deepcopy(network)
        with torch.no_grad():
            tampered.codebooks.add_(0.05 * torch.randn_like(tampered.codebooks))
        return real_export(tampered, directory)

    monkeypatch.setattr(export_module, "export_onnx", tampered_export)
    out = tmp_path / "bundle"
    with pytest.raises(ParityError, match="fails ONNX parity"):
        _export(out, corpus)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind either

    (out / "old").mkdir(parents=True)
    (out / "manifest.json").write_text("{}")  # an existing bundle survives a failed re-export
    with pytest.raises(ParityError):
        _export(out, corpus, overwrite=True)
    assert (out / "manifest.json").read_text() == "{}"


def test_invalid_or_duplicate_ids_are_refused_before_any_export(tmp_path: Path, corpus) -> None:
    documents, ids = corpus
    duplicate = ids.copy()
    duplicate[1] = duplicate[0]
    with pytest.raises(DuplicateSemanticIdError):
        _export(tmp_path / "bundle", (documents, duplicate))
    assert not (tmp_path / "bundle").exists()


def _recommender(documents, indexer: SemanticIdNetwork, tolerance_noise: float = 0.0):  # type: ignore[no-untyped-def]
    from training.downstream.export import RecommenderModel
    from training.encoder import mean_pool
    from training.recommendation.model import Recommender
    from training.recommendation.settings import RecommenderSettings

    tokenizer = load_tokenizer()
    with torch.no_grad():
        batch = tokenizer([d.text for d in documents], padding=True, truncation=True, max_length=48,
                          return_tensors="pt")
        states = indexer.encode(batch["input_ids"], batch["attention_mask"])
        vectors = torch.nn.functional.normalize(mean_pool(states, batch["attention_mask"]), dim=-1).numpy()
    torch.manual_seed(5)
    model = Recommender(32, (8, 8, 4), RecommenderSettings(d_model=16, num_heads=2, num_layers=1, max_history=4,
                                                           dropout=0.0)).eval()
    histories = [np.arange(i, i + 1 + i % 4) for i in range(20)]
    return RecommenderModel(model=model, vectors=vectors, parity_histories=histories, beam_size=20,
                            default_mode="generative", hybrid_weight=0.5, exclude_history=True,
                            text_encoder="the indexer's encoder", text_max_length=48)


def test_a_recommender_that_fails_parity_is_not_written(tmp_path: Path, corpus, monkeypatch) -> None:
    """The torch side of the recommender's parity check off by 1e-3: above the tolerance, refused; off by
    2e-5, within it: written, near ties allowed to swap."""
    from training.recommendation import export as recommender_export

    documents, ids = corpus
    indexer = tiny_network(1)
    real_step = recommender_export.TorchGraphs.step
    offsets = {"value": 1e-3}

    def shifted_step(self, hidden, codes, level):  # type: ignore[no-untyped-def]
        out = real_step(self, hidden, codes, level)
        return out + offsets["value"] * np.random.default_rng(level).standard_normal(out.shape).astype(out.dtype)

    monkeypatch.setattr(recommender_export.TorchGraphs, "step", shifted_step)
    models = {"indexer": BundleModel(indexer, [d.text for d in documents[:10]], 48)}
    out = tmp_path / "bundle"
    with pytest.raises(ParityError, match="the recommender fails ONNX parity"):
        export_bundle(out, models, documents, ids, load_tokenizer(), encoder="all-MiniLM-L6-v2",
                      recommender=_recommender(documents, indexer), indexer_int8=False)
    assert not out.exists()
    offsets["value"] = 2e-5
    manifest = export_bundle(out, models, documents, ids, load_tokenizer(), encoder="all-MiniLM-L6-v2",
                             recommender=_recommender(documents, indexer), indexer_int8=False)
    parity = manifest.models["recommender"].parity
    assert parity.top_k_identical and parity.mismatched_inputs == 0 and 1e-5 < parity.max_abs_diff <= 1e-4


class _TableModel:
    """A hand-made text model for check_parity, as the torch model (TorchModel's methods) or as the runner
    (OnnxRunner's): the log-probability of code c at level l after prefix p is ``table[(l, p)][c]`` whatever the
    text, plus ``nudge[(l, p)][c]``."""

    def __init__(self, table: dict, nudge: dict | None = None, runner: bool = False) -> None:
        from bundle import grouped_step_fn

        self.codebook_sizes = (3, 2, 1)
        self.table, self.nudge, self.runner = table, nudge or {}, runner
        self.tokenizer = self._Tokenizer()
        self._grouped = grouped_step_fn

    class _Tokenizer:
        def encode(self, texts):  # type: ignore[no-untyped-def]
            return np.ones((len(texts), 3), np.int64), np.ones((len(texts), 3), np.int64)

    def tokenize(self, texts):  # type: ignore[no-untyped-def]
        return self.tokenizer.encode(texts)

    def encode_ids(self, ids, mask):  # type: ignore[no-untyped-def]
        from bundle import Encoded

        states = np.zeros((len(ids), 3, 4), np.float32)
        return Encoded(states=states, attention_mask=mask) if self.runner else states

    def encode(self, texts):  # type: ignore[no-untyped-def]
        from bundle import Encoded

        ids, mask = self.tokenize(texts)
        return Encoded(states=np.zeros((len(ids), 3, 4), np.float32), attention_mask=mask)

    def decoder_step(self, states, mask, codes, level):  # type: ignore[no-untyped-def]
        out = np.full((*codes.shape[:2], 3), -30.0)
        for b in range(codes.shape[0]):
            for w in range(codes.shape[1]):
                prefix = tuple(int(c) for c in codes[b, w, :level])
                values = np.asarray(self.table[(level, prefix)], dtype=np.float64)
                values = values + np.asarray(self.nudge.get((level, prefix), 0.0))
                out[b, w, : len(values)] = values
        return out.astype(np.float32)

    def query_step(self, encoded):  # type: ignore[no-untyped-def]
        def step(queries, codes, level):  # type: ignore[no-untyped-def]
            part = encoded.rows(queries)  # OnnxRunner.step: the level's codes only
            return self.decoder_step(part.states, part.attention_mask, codes, level)[..., : self.codebook_sizes[level]]
        return step

    def step_fn(self, encoded):  # type: ignore[no-untyped-def]
        return self._grouped(self.query_step(encoded), self.codebook_sizes)


def test_text_parity_lets_near_ties_swap_and_refuses_real_differences() -> None:
    """Hand-made near ties (issue 18: a bundle was refused because two nearly equal results swapped places)."""
    from training.downstream.export import check_parity

    trie = SemanticIdTrie.build(np.array([[a, b, 0] for a in range(3) for b in range(2)]), codebook_sizes=[3, 2, 1])
    log = np.log
    counters = {(2, (a, b)): [0.0] for a in range(3) for b in range(2)}
    # 1. The two results under prefix 0 score within 1e-5 of each other; torch and the runner order them apart.
    table = {(0, ()): [log(0.7), log(0.25), log(0.05)], (1, (0,)): [log(0.5), log(0.5) - 1e-5],
             (1, (1,)): [log(0.9), log(0.1)], (1, (2,)): [log(0.5), log(0.5)], **counters}
    runner = _TableModel(table, nudge={(1, (0,)): [0.0, 2e-5]}, runner=True)
    figures, decoded = check_parity(_TableModel(table), runner, ["a text", "another"], trie, tolerance=1e-4,
                                    beam_size=3, top_k=3)
    assert decoded.semantic_ids[0, :2, :2].tolist() == [[0, 1], [0, 0]]  # the runner's order; torch's is [0, 0], [0, 1]
    assert figures.max_abs_diff == pytest.approx(2e-5, rel=1e-2)
    assert figures.top_k_identical and figures.mismatched_inputs == 0

    # 2. A near tie at a beam's cut-off: at level 0, beam 2 keeps prefixes {0, 1} in torch and {0, 2} in the
    # runner, so their second results differ by far more than the tolerance (log 0.24 vs log 0.285);
    # searched again with the wide beam, both find the same two.
    cut = {(0, ()): [log(0.4), log(0.3), log(0.3) - 1e-5], (1, (0,)): [log(0.9), log(0.1)],
           (1, (1,)): [log(0.2), log(0.8)], (1, (2,)): [log(0.95), log(0.05)], **counters}
    runner = _TableModel(cut, nudge={(0, ()): [0.0, 0.0, 2e-5]}, runner=True)
    figures, decoded = check_parity(_TableModel(cut), runner, ["a text"], trie, tolerance=1e-4, beam_size=2, top_k=2)
    assert decoded.semantic_ids[0, :, :2].tolist() == [[0, 0], [2, 0]]  # torch's beam-2 search: [0, 0], [1, 1]
    assert figures.top_k_identical and figures.mismatched_inputs == 0

    # 3. A real difference: the runner moves the third result's probability to its sibling.
    runner = _TableModel(table, nudge={(1, (1,)): [-2.0, 2.0]}, runner=True)
    figures, _ = check_parity(_TableModel(table), runner, ["a text", "another"], trie, tolerance=1e-4, beam_size=3,
                              top_k=3)
    assert not figures.top_k_identical and figures.mismatched_inputs == 2 and figures.max_abs_diff > 1.9
