"""Evaluation: valid IDs only, metrics equal a hand computation, cold start."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from bundle import Encoded, grouped_step_fn
from training.data.amazon import item_text, load_amazon
from training.downstream.cold_start import greedy_codes, index_cold_documents
from training.downstream.evaluate import (
    TorchModel,
    beam_search,
    decoded_run,
    restrict_qrels,
    score_run,
)
from training.encoder import load_tokenizer
from training.indexing.network import NetworkConfig, SemanticIdNetwork
from trie import SemanticIdTrie


class DistanceModel:
    """A model with the bundle's interface whose level-0 log-probs fall with |code - t_q|, t_q = the
    query's number; the counter level has one code. Its rankings are known by hand."""

    def __init__(self, targets: Sequence[int], size: int = 8) -> None:
        self.targets = list(targets)
        self.size = size
        self.codebook_sizes = (size, 1)

    def encode(self, texts: Sequence[str]) -> Encoded:
        ids, mask = self.tokenize(texts)
        return Encoded(self.encode_ids(ids, mask), mask)

    def step_fn(self, encoded: Encoded):  # type: ignore[no-untyped-def]
        def step(queries: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
            return self.decoder_step(encoded.states[queries], encoded.attention_mask[queries], codes, level)
        return grouped_step_fn(step, self.codebook_sizes)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array([[int(t)] for t in texts], dtype=np.int64)  # (B, 1): the text is the target code
        return ids, np.ones_like(ids)

    def encode_ids(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return input_ids[:, :, None].astype(np.float32)  # (B, 1, 1)

    def decoder_step(self, states: np.ndarray, mask: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
        b, w, num_levels = codes.shape
        assert num_levels == 1 and states.shape[0] == b
        if level == 1:
            out = np.full((b, w, self.size), -1e9, dtype=np.float32)
            out[..., 0] = 0.0
            return out
        target = states[:, 0, 0][:, None, None]  # (B, 1, 1)
        logits = -2.0 * np.abs(np.arange(self.size)[None, None, :] - target)  # (B, 1, V)
        logits = np.broadcast_to(logits, (b, w, self.size))
        return (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)


def test_metrics_of_a_decoded_run_equal_a_hand_computation() -> None:
    ids = np.array([[c, 0] for c in range(8)])  # one document per code
    trie = SemanticIdTrie.build(ids, codebook_sizes=[8, 1])
    doc_ids = [f"doc{c}" for c in range(8)]
    # query q0 wants doc3 and the model aims at 3 (rank 1); q1 wants doc5, the model aims at 4:
    # ranking 4, 3, 5 (3 and 5 tie, the smaller prefix first) -> rank 3; q2 wants doc7, aims at 0:
    # ranking 0, 1, 2, 3, 4 -> doc7 not in the top 5.
    decoded = beam_search(DistanceModel([3, 4, 0]), ["3", "4", "0"], trie, beam_size=20, top_k=5)
    assert decoded.rows[0].tolist() == [3, 2, 4, 1, 5]
    assert decoded.rows[1].tolist()[:3] == [4, 3, 5]
    assert decoded.rows[2].tolist() == [0, 1, 2, 3, 4]
    run = decoded_run(decoded, ["q0", "q1", "q2"], doc_ids)
    qrels = {"q0": {"doc3": 1}, "q1": {"doc5": 1}, "q2": {"doc7": 1}}
    got = score_run(run, qrels, ["recall@5", "ndcg@5", "mrr@5", "recall@1"])
    assert got["recall@5"] == pytest.approx(2 / 3)
    assert got["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4) + 0) / 3)
    assert got["mrr@5"] == pytest.approx((1 + 1 / 3) / 3)
    assert got["recall@1"] == pytest.approx(1 / 3)
    # cold-start split of the same run: only q1's document is cold
    cold = restrict_qrels(qrels, lambda d: d == "doc5")
    assert cold == {"q1": {"doc5": 1}}
    assert score_run(run, cold, ["ndcg@5"])["ndcg@5"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def tiny_model() -> TorchModel:
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    network = SemanticIdNetwork(NetworkConfig(num_levels=2, codebook_size=8, counter_size=4, decoder_layers=1,
                                              decoder_heads=2, decoder_ff_size=64), encoder=encoder)
    return TorchModel(network, load_tokenizer(), max_length=32, device="cpu")


def test_beam_search_with_the_network_returns_only_ids_of_the_trie(tiny_model: TorchModel) -> None:
    rng = np.random.default_rng(1)
    learned = np.unique(rng.integers(0, 8, (25, 2)), axis=0)
    ids = np.concatenate([learned, rng.integers(0, 4, (len(learned), 1))], axis=1)
    trie = SemanticIdTrie.build(ids, codebook_sizes=[8, 8, 4])
    texts = [item_text(item) for item in list(load_amazon().items.values())[:12]]
    decoded = beam_search(tiny_model, texts, trie, beam_size=20, top_k=10, batch_size=5)
    assert decoded.semantic_ids.shape == (12, 10, 3)
    assert (decoded.counts == 10).all()
    valid = {tuple(row) for row in ids.tolist()}
    for q in range(12):
        found = [tuple(r) for r in decoded.semantic_ids[q].tolist()]
        assert set(found) <= valid and len(set(found)) == 10
        assert [ids[r].tolist() for r in decoded.rows[q]] == [list(f) for f in found]
        assert np.all(np.diff(decoded.scores[q]) <= 1e-12)  # best first


def test_cold_documents_take_greedy_codes_and_the_next_free_counter(tiny_model: TorchModel) -> None:
    texts = [item_text(item) for item in list(load_amazon().items.values())[:6]]
    codes, ranked = greedy_codes(tiny_model, texts, batch_size=4)
    assert codes.shape == (6, 2) and ranked.shape == (6, 8) and (ranked[:, 0] == codes[:, 1]).all()
    # the greedy code of level t is the argmax of the network's step given the codes before it
    ids, mask = tiny_model.tokenize(texts[:1])
    states = tiny_model.encode_ids(ids, mask)
    first = tiny_model.decoder_step(states, mask, np.zeros((1, 1, 2), np.int64), 0)[0, 0, :8].argmax()
    assert first == codes[0, 0]
    # Two new documents with the warm documents' prefix: counters 0 and 2 are taken, so 1 and 3.
    warm = np.array([[codes[0, 0], codes[0, 1], 0], [codes[0, 0], codes[0, 1], 2]])
    trie, assigned = index_cold_documents(tiny_model, [texts[0], texts[0]], warm, np.array([0, 1]),
                                          np.array([2, 3]), [8, 8, 4])
    assert assigned.tolist() == [[*codes[0], 1], [*codes[0], 3]]
    assert trie.row_of(tuple(assigned[1])) == 3
    # A third one finds the prefix full and falls back to the next most probable last-level code.
    trie, third = index_cold_documents(tiny_model, [texts[0]] * 3, warm, np.array([0, 1]), np.array([2, 3, 4]),
                                       [8, 8, 4])
    assert third[2].tolist() == [codes[0, 0], ranked[0, 1], 0]


def test_the_hybrid_weight_is_the_best_on_the_given_queries_and_the_smaller_on_a_tie() -> None:
    """Two queries by hand: q1's relevant d1 is the beam's second (p 0.1) but the nearest by cosine; q2's d3 is the
    beam's first (p 0.8) but third by cosine. w = 0 finds d1 only, w = 1 d3 only; from w = 0.4 (to 0.45) both are
    first; below it q2's d5 wins, above 0.5 q1's d0 does."""
    from bundle import SearchCandidates
    from training.downstream.experiment import choose_search_weight, default_search_mode, search_settings

    neg = -np.inf
    candidates = SearchCandidates(rows=np.array([[0, 1, 2], [3, 4, 5]]),
                                  generative=np.log(np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]])),
                                  dense=np.array([[0.1, 0.9, 0.5], [0.2, 0.3, 0.6]]))
    assert candidates.generative[0, 2] == neg
    doc_ids = [f"d{i}" for i in range(6)]
    qrels = {"q1": {"d1": 1}, "q2": {"d3": 1}}
    weight, figures = choose_search_weight(candidates, (0.0, 0.3, 0.45, 0.4, 0.5, 1.0), ["q1", "q2"], doc_ids, qrels)
    assert weight == 0.4 and figures["0.4"] == figures["0.45"] == pytest.approx(1.0)
    assert figures["0"] == pytest.approx((1 + 0.5) / 2) and figures["1"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert figures["0.3"] < 1.0 and figures["0.5"] < 1.0
    settings = search_settings({"hybrid_weight": 0.4, "default_mode": "hybrid", "dense_candidates": 100,
                                "hybrid_chosen_on": "valid"})
    assert settings is not None and (settings.default_mode, settings.hybrid_weight) == ("hybrid", 0.4)
    assert search_settings({"valid": {}}) is None  # evaluated without hybrid: nothing chosen
    assert default_search_mode(0.5, 0.6) == "hybrid" and default_search_mode(0.6, 0.5) == "generative"
    assert default_search_mode(0.9, 0.9) == "hybrid"  # a tie: hybrid also reads the dense evidence
