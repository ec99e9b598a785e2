"""The recommender's rankings and their metrics (Recall@5/10, NDCG@5/10 over users).

For each user the model reads the last `max_history` items of the history and takes the hidden
state at the most recent one. Then:

- `generative`: constrained beam search (`trie.constrained_beam_search`, beam `beam_size`, the
  top `beam_size` complete IDs kept) with the ID decoder's log-probabilities; the candidates in
  beam order (summed log-probability over the L + 1 levels, best first).
- `hybrid`: the same candidates re-scored by the rule

      fused = (1 - w) * generative log-probability + w * dense log-probability

  where the dense log-probability is log softmax over the whole catalogue of the dense head's
  scores (so both terms are log-probabilities of the same event, "the next item is this one").
  The rule is `bundle.recommendation.fuse`, the one the service ranks with (it passes the raw
  dense scores: they differ by log Z, a constant per user, so the order is the same).
  w = 0 is the generative order, w = 1 re-ranks the beam by the dense head alone; w is chosen
  on validation NDCG@10 (`choose_hybrid_weight`), never on test. Ties keep beam order.
- `dense` (a diagnostic, not a served mode): the whole catalogue ranked by the dense head.

Items already in the user's (whole) history are removed from every ranking when
`exclude_history` (the default; repeat purchases are a real use, so it is a setting): the beam
search gives their last-level codes -inf, so the beam fills with other items. A target outside
the candidates gets rank N + 1 (it counts as a miss at every cutoff). Metrics:
`training.baselines.recommendation.rank_metrics` (one target per user).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bundle.recommendation import HistoryExclusion, fuse
from training.baselines.recommendation import rank_metrics
from training.baselines.sasrec import left_pad
from training.recommendation.items import ItemCatalogue
from training.recommendation.model import Recommender
from training.recommendation.objective import CatalogueTensors, history_hidden
from trie import SemanticIdTrie, constrained_beam_search

logger = logging.getLogger(__name__)

RANKINGS = ("generative", "hybrid")
STEP_CHUNK = 65536  # beams per decoder call: bounds memory at beam 100 x 22k users


@dataclass(frozen=True)
class ScoredUsers:
    """Beam candidates and the dense head's view of them, for Q users.

    rows (Q, k) catalogue rows of the candidates in beam order, -1 where a user has fewer;
    generative (Q, k) their summed log-probabilities (-inf where missing); dense (Q, k) their dense
    log-probabilities; dense_ranks (Q,) the target's 1-based rank in the dense full ranking;
    targets (Q,) the targets' catalogue rows.
    """

    rows: np.ndarray
    generative: np.ndarray
    dense: np.ndarray
    dense_ranks: np.ndarray
    targets: np.ndarray
    num_items: int

    def subset(self, keep: np.ndarray) -> ScoredUsers:
        return ScoredUsers(self.rows[keep], self.generative[keep], self.dense[keep], self.dense_ranks[keep],
                           self.targets[keep], self.num_items)


def candidate_ranks(rows: np.ndarray, scores: np.ndarray, targets: np.ndarray, num_items: int) -> np.ndarray:
    """1-based rank of each target among its candidates ordered by `scores` (descending; ties keep
    candidate order): rows, scores (Q, k); targets (Q,). A target not among them gets num_items + 1."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=1)
    hit = ordered == targets[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, num_items + 1)


def ranks_for(scored: ScoredUsers, ranking: str, weight: float = 0.0) -> np.ndarray:
    """(Q,) ranks under `ranking` ("generative", "hybrid" with `weight`, or "dense")."""
    if ranking == "generative":
        return candidate_ranks(scored.rows, scored.generative, scored.targets, scored.num_items)
    if ranking == "hybrid":
        return candidate_ranks(scored.rows, fuse(scored.generative, scored.dense, weight), scored.targets,
                               scored.num_items)
    if ranking == "dense":
        return scored.dense_ranks
    raise ValueError(f"unknown ranking {ranking!r}")


def choose_hybrid_weight(scored: ScoredUsers, weights: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The weight with the best NDCG@10 (ties: the smaller weight) and NDCG@10 per weight."""
    figures = {f"{w:g}": rank_metrics(ranks_for(scored, "hybrid", w))["ndcg@10"] for w in weights}
    best = max(weights, key=lambda w: (figures[f"{w:g}"], -w))
    return float(best), figures


def decoder_step_fn(model: Recommender, hidden: torch.Tensor, catalogue: ItemCatalogue,
                    exclusion: HistoryExclusion | None) -> Callable[[int, np.ndarray, np.ndarray], np.ndarray]:
    """The beam search's step_fn for queries with hidden states (Q, d): the ID decoder's log-probs of
    level `level` for the beams of `query` (n,) with `prefixes` (n, level), history items excluded."""

    @torch.no_grad()
    def step_fn(level: int, query: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        out = np.empty((len(query), catalogue.codebook_sizes[level]), dtype=np.float64)
        for lo in range(0, len(query), STEP_CHUNK):
            q = torch.from_numpy(query[lo:lo + STEP_CHUNK]).to(hidden.device)
            p = torch.from_numpy(prefixes[lo:lo + STEP_CHUNK]).to(hidden.device)
            out[lo:lo + STEP_CHUNK] = model.decoder_step(hidden[q], p, level).double().cpu().numpy()
        if exclusion is not None and level == catalogue.num_levels:
            exclusion.apply(query, prefixes, out)
        return out

    return step_fn


@torch.no_grad()
def score_users(model: Recommender, tables: CatalogueTensors, catalogue: ItemCatalogue, trie: SemanticIdTrie,
                histories: Sequence[np.ndarray], targets: np.ndarray, beam_size: int = 20,
                exclude_history: bool = True, batch_size: int = 1024) -> ScoredUsers:
    """Beam candidates, their generative and dense log-probabilities, and the dense ranks.

    histories: per user, item indices (1-based) oldest first; targets (Q,) item indices.
    """
    model.eval()
    tokens = tables.tokens(model)  # (N + 1, d)
    n = catalogue.num_items
    rows_out = np.full((len(targets), beam_size), -1, dtype=np.int64)
    gen_out = np.full((len(targets), beam_size), -np.inf)
    dense_out = np.full((len(targets), beam_size), -np.inf)
    dense_ranks = np.empty(len(targets), dtype=np.int64)
    for start in range(0, len(targets), batch_size):
        batch_histories = histories[start:start + batch_size]
        items = left_pad(batch_histories, model.max_history)
        width = max(int((items > 0).sum(1).max()), 1)
        items_t = torch.from_numpy(items[:, -width:]).to(tables.vectors.device)
        hidden = history_hidden(model, tables, items_t, tokens)[:, -1]  # (B, d)
        seen = [h.astype(np.int64) - 1 for h in batch_histories]  # catalogue rows
        # dense head: log softmax over the whole catalogue
        logits = (model.dense_query(hidden) @ tokens[1:].T).double().cpu().numpy()  # (B, N)
        if exclude_history:
            for row, rows in enumerate(seen):
                logits[row, rows] = -np.inf
        log_z = np.logaddexp.reduce(logits, axis=1, keepdims=True)
        dense_logp = logits - log_z
        target_rows = targets[start:start + batch_size] - 1
        target_scores = dense_logp[np.arange(len(target_rows)), target_rows]
        dense_ranks[start:start + len(target_rows)] = (dense_logp > target_scores[:, None]).sum(1) + 1
        # ID decoder: constrained beam search
        exclusion = (HistoryExclusion([catalogue.semantic_ids[rows] for rows in seen], catalogue.codebook_sizes)
                     if exclude_history else None)
        step_fn = decoder_step_fn(model, hidden, catalogue, exclusion)
        result = constrained_beam_search(step_fn, trie, num_queries=len(batch_histories), beam_size=beam_size,
                                         top_k=beam_size)
        # (B, beam) trie rows = catalogue rows. The search keeps a -inf candidate (an excluded item)
        # when a query has fewer allowed ones than the beam: it is no candidate.
        rows = np.where(np.isfinite(result.scores), result.rows, -1)
        rows_out[start:start + len(rows)] = rows
        gen_out[start:start + len(rows)] = np.where(rows >= 0, result.scores, -np.inf)
        present = rows >= 0
        dense_out[start:start + len(rows)] = np.where(
            present, np.take_along_axis(dense_logp, np.maximum(rows, 0), axis=1), -np.inf)
    return ScoredUsers(rows_out, gen_out, dense_out, dense_ranks, targets - 1, n)


def ranking_metrics(scored: ScoredUsers, hybrid_weight: float) -> dict[str, dict[str, float]]:
    """Recall/NDCG@5/10 of the generative, hybrid and dense rankings."""
    return {"generative": rank_metrics(ranks_for(scored, "generative")),
            "hybrid": rank_metrics(ranks_for(scored, "hybrid", hybrid_weight)),
            "dense": rank_metrics(ranks_for(scored, "dense"))}


def beam_recall(scored: ScoredUsers) -> float:
    """Share of users whose target is among the beam's candidates (the hybrid's ceiling)."""
    return float((scored.rows == scored.targets[:, None]).any(axis=1).mean())
