"""The item-token recommender: the hybrid rule, history exclusion, histories of every length, and a
tiny P5 dataset end to end (training through the loss, evaluation of both rankings)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bundle.recommendation import HistoryExclusion
from tests.tiny_p5 import write_tiny_p5
from training.errors import ConfigError
from training.recommendation.evaluate import (
    ScoredUsers,
    candidate_ranks,
    choose_hybrid_weight,
    decoder_step_fn,
    fuse,
    ranks_for,
    score_users,
)
from training.recommendation.items import ItemCatalogue
from training.recommendation.model import Recommender
from training.recommendation.objective import CatalogueTensors, history_hidden, make_loss_fn
from training.recommendation.settings import RecommenderSettings
from trie import SemanticIdTrie, constrained_beam_search

# ------------------------------------------------------------------------------------- the hybrid rule


def test_fuse_is_the_documented_convex_combination_and_keeps_missing_candidates_out():
    generative = np.array([[-1.0, -2.0, -np.inf]])
    dense = np.array([[-5.0, -1.0, -0.1]])
    assert np.allclose(fuse(generative, dense, 0.0)[0, :2], [-1.0, -2.0])
    assert np.allclose(fuse(generative, dense, 1.0)[0, :2], [-5.0, -1.0])
    assert np.allclose(fuse(generative, dense, 0.25)[0, :2], [0.75 * -1 + 0.25 * -5, 0.75 * -2 + 0.25 * -1])
    # a slot the beam did not fill never enters the ranking, whatever its dense score
    assert fuse(generative, dense, 1.0)[0, 2] == -np.inf


def test_hybrid_ranks_follow_the_fused_scores_on_hand_made_candidates():
    rows = np.array([[7, 3, 5], [2, 9, -1]])
    generative = np.array([[-0.5, -1.0, -3.0], [-0.1, -4.0, -np.inf]])
    dense = np.array([[-6.0, -0.5, -0.2], [-3.0, -0.2, -np.inf]])
    targets = np.array([5, 9])
    scored = ScoredUsers(rows, generative, dense, np.array([1, 1]), targets, num_items=10)
    # beam order: item 5 is third for user 0, item 9 second for user 1
    assert ranks_for(scored, "generative").tolist() == [3, 2]
    # w = 1: dense order among the candidates: user 0 -> 5, 3, 7; user 1 -> 9, 2
    assert ranks_for(scored, "hybrid", 1.0).tolist() == [1, 1]
    # w = 0.5: user 0 fused = [-3.25, -0.75, -1.6] -> 3, 5, 7 (target second); user 1 [-1.55, -2.1] -> 2, 9
    assert ranks_for(scored, "hybrid", 0.5).tolist() == [2, 2]
    weight, figures = choose_hybrid_weight(scored, [0.0, 0.5, 1.0])
    assert weight == 1.0 and figures["1"] == pytest.approx(1.0)


def test_candidate_ranks_misses_and_ties():
    rows = np.array([[4, 1, 2], [4, 1, 2]])
    scores = np.array([[-1.0, -1.0, -2.0], [-1.0, -1.0, -2.0]])
    # equal scores keep beam order; a target outside the candidates ranks past the catalogue
    assert candidate_ranks(rows, scores, np.array([1, 3]), num_items=5).tolist() == [2, 6]


def test_choose_hybrid_weight_prefers_the_smaller_weight_on_ties():
    scored = ScoredUsers(np.array([[1, 2]]), np.array([[-1.0, -2.0]]), np.array([[-1.0, -2.0]]),
                         np.array([1]), np.array([1]), num_items=3)
    assert choose_hybrid_weight(scored, [1.0, 0.0, 0.5])[0] == 0.0


# ---------------------------------------------------------------------------------- history exclusion


def test_history_exclusion_removes_exactly_the_history_items_from_the_beam():
    ids = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 0, 1], [1, 1, 0]])
    sizes = (2, 2, 2)
    trie = SemanticIdTrie.build(ids, codebook_sizes=list(sizes))
    # user 0 saw rows 1 and 1 again (a repeat) and 4; user 1 saw nothing
    exclusion = HistoryExclusion([ids[[1, 4, 1]], ids[np.array([], dtype=np.int64)]], sizes)

    def step_fn(level, query, prefixes):
        out = np.full((len(query), 2), np.log(0.5))
        if level == 2:
            exclusion.apply(query, prefixes, out)
        return out

    result = constrained_beam_search(step_fn, trie, num_queries=2, beam_size=6, top_k=6)
    kept = np.isfinite(result.scores)  # excluded IDs come back last, scored -inf, when the beam is not full
    assert sorted(result.rows[0][kept[0]].tolist()) == [0, 2, 3, 5]
    assert sorted(result.rows[1][kept[1]].tolist()) == [0, 1, 2, 3, 4, 5]
    assert sorted(result.rows[0][~kept[0]].tolist()) == [1, 4]


# -------------------------------------------------------------------------------------- the model


def _catalogue(num_items: int = 12, text_dim: int = 8, seed: int = 0) -> ItemCatalogue:
    rng = np.random.default_rng(seed)
    codes = np.stack([np.arange(num_items) % 3, np.arange(num_items) // 3 % 2], axis=1)
    from training.indexing.id_table import collision_counter

    ids = np.concatenate([codes, collision_counter(codes)[:, None]], axis=1)
    vectors = rng.normal(size=(num_items, text_dim)).astype(np.float32)
    return ItemCatalogue(tuple(f"i{i}" for i in range(num_items)), vectors, ids,
                         (3, 2, int(ids[:, -1].max()) + 1))


def _settings(**changes) -> RecommenderSettings:
    base = RecommenderSettings(d_model=16, num_heads=2, num_layers=1, max_history=4, dropout=0.0,
                               beam_size=5, dense_negatives=0)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("decoder", ["transformer", "mlp"])
def test_histories_shorter_than_two_longer_than_the_model_and_with_repeats(decoder):
    torch.manual_seed(0)
    catalogue = _catalogue()
    settings = _settings(decoder=decoder)
    model = Recommender(catalogue.text_dim, catalogue.codebook_sizes, settings).eval()
    tables = CatalogueTensors(catalogue)
    histories = [np.array([3]), np.array([1, 2, 3, 4, 5, 6, 7]), np.array([2, 2, 5, 2])]
    targets = np.array([4, 8, 9])
    scored = score_users(model, tables, catalogue, catalogue.trie(), histories, targets, beam_size=5)
    for user, history in enumerate(histories):
        candidates = scored.rows[user][scored.rows[user] >= 0]
        # exclusion acts at the last level: each seen item costs at most one of the 5 slots
        assert len(candidates) >= 5 - len(set(history.tolist())) and len(candidates) >= 1
        assert not set(candidates.tolist()) & set((history - 1).tolist())
    # the generative scores are log-probabilities of whole IDs: sorted, <= 0
    assert np.all(np.diff(scored.generative, axis=1) <= 1e-12) and np.all(scored.generative <= 0)
    # a history longer than the model reads is cut to its most recent max_history items
    with torch.no_grad():
        full = history_hidden(model, tables, torch.tensor([[1, 2, 3, 4, 5, 6, 7][-4:]]))[:, -1]
        padded = history_hidden(model, tables, torch.tensor([[0, 0, 4, 5, 6, 7]][0][-4:]).unsqueeze(0))[:, -1]
        short = history_hidden(model, tables, torch.tensor([[0, 0, 0, 3]]))[:, -1]
        shorter = history_hidden(model, tables, torch.tensor([[3]]))[:, -1]
    assert torch.allclose(full, padded, atol=1e-6)
    assert torch.allclose(short, shorter, atol=1e-6)  # left padding changes nothing
    with pytest.raises(ValueError, match="at most 4"):
        history_hidden(model, tables, torch.tensor([[1, 2, 3, 4, 5]]))


def test_decoder_step_equals_teacher_forcing():
    torch.manual_seed(1)
    catalogue = _catalogue()
    model = Recommender(catalogue.text_dim, catalogue.codebook_sizes, _settings()).eval()
    hidden = torch.randn(5, 16)
    codes = torch.from_numpy(catalogue.semantic_ids[:5])
    with torch.no_grad():
        forced = model.decoder_logits(hidden, codes)
        for level in range(3):
            step = model.decoder_step(hidden, codes[:, :level], level)
            assert torch.allclose(step, forced[level].log_softmax(-1), atol=1e-5)
    step_fn = decoder_step_fn(model, hidden, catalogue, None)
    assert step_fn(1, np.array([0, 4]), codes[[0, 4], :1].numpy()).shape == (2, 2)


def test_settings_refuse_bad_values():
    with pytest.raises(ConfigError, match="beam_size"):
        RecommenderSettings(beam_size=101)
    with pytest.raises(ConfigError, match="num_heads"):
        RecommenderSettings(d_model=10, num_heads=3)


@pytest.fixture
def one_thread():
    """One torch thread: on shared, oversubscribed CPUs intra-op threads wait on each other (tiny tensors)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("negatives", [0, 6])
def test_the_loss_learns_a_deterministic_next_item_rule(negatives, one_thread):
    """Sequences that always go i -> i + 1: a few hundred steps make both heads predict it."""
    torch.manual_seed(0)
    catalogue = _catalogue()
    settings = _settings(dense_negatives=negatives, lr=3e-3)
    model = Recommender(catalogue.text_dim, catalogue.codebook_sizes, settings)
    cold = np.zeros(catalogue.num_items + 1, dtype=bool)
    tables = CatalogueTensors(catalogue, cold)
    loss_fn = make_loss_fn(tables, settings, torch.Generator().manual_seed(0))
    starts = np.arange(1, 8)
    items = torch.tensor([[s, s + 1, s + 2, s + 3] for s in starts])  # (7, 4)
    targets = items + 1
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    first = None
    for _step in range(300):
        loss, _ = loss_fn(model, {"items": items, "targets": targets})
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.2 * first
    histories = [np.array([s, s + 1, s + 2]) for s in starts]
    scored = score_users(model, tables, catalogue, catalogue.trie(), histories, starts + 3, beam_size=5)
    assert (ranks_for(scored, "generative") == 1).mean() >= 6 / 7
    assert (ranks_for(scored, "dense") == 1).mean() >= 6 / 7


def test_item_id_embedding_is_absent_for_cold_items_dropped_in_training_and_folds_into_text_vectors():
    torch.manual_seed(3)
    catalogue = _catalogue(text_dim=32)  # the fold into text vectors needs D >= d_model (16)
    settings = _settings(item_id_embedding=True, item_id_dropout=0.5)
    with pytest.raises(ValueError, match="num_items"):
        Recommender(catalogue.text_dim, catalogue.codebook_sizes, settings)
    model = Recommender(catalogue.text_dim, catalogue.codebook_sizes, settings, catalogue.num_items).eval()
    cold = np.zeros(catalogue.num_items + 1, dtype=bool)
    cold[[2, 7]] = True
    tables = CatalogueTensors(catalogue, cold)
    assert tables.items.tolist() == [0, 1, 0, 3, 4, 5, 6, 0, 8, 9, 10, 11, 12]
    with torch.no_grad():
        tokens = tables.tokens(model)  # (N + 1, d)
        plain = model.item_tokens(tables.vectors, tables.codes)  # no item input: text and codes alone
        # a cold item's token is its text vector and codes alone; a warm one's carries its own embedding
        assert torch.equal(tokens[[2, 7]], plain[[2, 7]])
        assert torch.allclose(tokens[1:] - plain[1:], model.item_embedding.weight[tables.items[1:]])
        assert (tokens[[1, 3]] - plain[[1, 3]]).abs().max() > 1e-3
        # the embedding moved into the text space gives the same tokens with no item input (the export's way)
        offsets = model.item_id_offsets()  # (N + 1, D)
        folded = model.item_tokens(tables.vectors + offsets[tables.items], tables.codes)
        assert torch.allclose(folded, tokens, atol=1e-5)
    narrow = Recommender(8, catalogue.codebook_sizes, settings, catalogue.num_items)
    with pytest.raises(ValueError, match="d_model must be <="):
        narrow.item_id_offsets()
    # training mode: about item_id_dropout of the tokens leave their embedding out, seeded by torch's RNG
    model.train()
    items = torch.arange(1, 13).repeat(200)
    vectors, codes = tables.vectors[items], tables.codes[items]
    with torch.no_grad():
        dropped = torch.isclose(model.item_tokens(vectors, codes, items), model.item_tokens(vectors, codes),
                                atol=1e-7).all(-1)
    assert 0.45 < dropped.float().mean().item() < 0.55
    with pytest.raises(ConfigError, match="item_id_dropout"):
        RecommenderSettings(item_id_dropout=1.0)


def test_cold_items_get_the_next_free_counter_among_the_warm_items_as_the_service_gives():
    from training.recommendation.data import index_cold_items

    ids = np.array([[0, 1, 0], [0, 1, 1], [0, 1, 2], [2, 2, 0], [2, 2, 1], [3, 0, 0]])
    cold = np.array([True, False, True, False, True, False])
    out = index_cold_items(ids, (4, 4, 3), cold)
    # warm items keep their IDs; under (0, 1) the warm item holds counter 1: the cold ones take 0, then 2
    assert out[~cold].tolist() == ids[~cold].tolist()
    assert out[[0, 2, 4]].tolist() == [[0, 1, 0], [0, 1, 2], [2, 2, 1]]
    assert len({tuple(r) for r in out.tolist()}) == len(out)
    ids[3] = [1, 1, 0]  # the only warm item under (2, 2) moves away: the cold item there takes counter 0
    assert index_cold_items(ids, (4, 4, 3), cold)[4].tolist() == [2, 2, 0]
    assert index_cold_items(ids, (4, 4, 3), np.zeros(6, dtype=bool)).tolist() == ids.tolist()


# ------------------------------------------------------------------------------- end to end, tiny P5


def test_tiny_p5_dataset_trains_and_evaluates_end_to_end(tmp_path, monkeypatch, capsys):
    import json

    from lmindexer.cli import main

    monkeypatch.setenv("LMINDEXER_CACHE_DIR", str(tmp_path / "cache"))
    items, sequences, ids_dir = write_tiny_p5(tmp_path)
    out = tmp_path / "model"
    status = main(["finetune", "--task", "recommendation", "--items", str(items), "--sequences", str(sequences),
                   "--ids", str(ids_dir), "--preset", "tiny", "--out", str(out), "--no-progress"])
    assert status == 0
    record = json.loads((out / "recommender.json").read_text())
    assert record["num_items"] == 20 and len(record["cold_items"]) == 2
    assert record["training"]["epochs"] == 30
    assert main(["evaluate", "--model", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test  all" in printed and "hybrid" in printed
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for split in ("valid", "test"):
        for ranking in ("generative", "hybrid"):
            assert set(metrics[split]["all"][ranking]) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10"}
        assert metrics[split]["warm_users"] + metrics[split]["cold_users"] == 40
    # the rule i -> i + 1 is learnt for warm targets: the generative ranking puts them first or close
    assert metrics["test"]["warm"]["generative"]["recall@5"] >= 0.8
    assert metrics["test"]["warm"]["hybrid"]["recall@5"] >= 0.8
    # a re-run finds the finished checkpoint and does not train again
    assert main(["finetune", "--task", "recommendation", "--items", str(items), "--sequences", str(sequences),
                 "--ids", str(ids_dir), "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0


def test_an_item_without_an_id_is_a_clear_error(tmp_path, monkeypatch):
    from training.downstream.tasks import load_id_source
    from training.errors import DataFormatError
    from training.recommendation.items import catalogue_ids

    _, _, ids_dir = write_tiny_p5(tmp_path)
    with pytest.raises(DataFormatError, match=r"no semantic ID, e\.g\. 'B99'"):
        catalogue_ids(["A01", "B99"], load_id_source(ids_dir))
