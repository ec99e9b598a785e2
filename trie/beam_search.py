"""Constrained beam search over a :class:`SemanticIdTrie`, batched over queries, model-agnostic.

The model is a ``step_fn`` (numpy in, numpy out): training passes a torch closure, the service an
onnxruntime one, tests a fake. Every beam carries its trie state (a node index per layer), so a step
costs one mask lookup per beam (a gather or a slice, never a prefix re-lookup) plus one vectorised
top-k per query.

Tie-breaking (deterministic): among equal scores the lexicographically smaller prefix wins (lower
code at the first differing level). Beams of a query are kept in lexicographic order between steps,
so candidate position order *is* lexicographic order and ties are resolved by position.

>>> from trie.semantic_id_trie import SemanticIdTrie
>>> trie = SemanticIdTrie.build(np.array([[0, 1, 0], [1, 0, 0], [1, 1, 0]]), codebook_sizes=[2, 2, 1])
>>> def step_fn(level, query_index, prefixes):  # prefers code 1 at every level
...     return np.log(np.tile([[0.4, 0.6]], (len(query_index), 1)))[:, : trie.codebook_sizes[level]]
>>> result = constrained_beam_search(step_fn, trie, num_queries=1, beam_size=2, top_k=2)
>>> result.semantic_ids[0].tolist(), result.rows[0].tolist(), result.counts.tolist()
([[1, 1, 0], [0, 1, 0]], [2, 0], [2])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trie.semantic_id_trie import SemanticIdTrie, TrieState

StepFn = Callable[[int, np.ndarray, np.ndarray], np.ndarray]
"""``step_fn(level, query_index (N,) int64, prefixes (N, level) int64) -> (N, >= codebook_sizes[level])``
log-probabilities of the next code for each live beam (columns past the level's size are ignored)."""


@dataclass(frozen=True)
class BeamSearchResult:
    """The top-k complete semantic IDs per query, best first.

    - ``semantic_ids`` ``(Q, top_k, L+1)`` int64, -1 beyond ``counts[q]``
    - ``scores`` ``(Q, top_k)`` float64 summed log-probabilities, -inf beyond ``counts[q]``
    - ``rows`` ``(Q, top_k)`` int64 document rows, -1 beyond ``counts[q]``
    - ``counts`` ``(Q,)`` int64 valid results per query (fewer than top_k when fewer IDs are reachable)
    """

    semantic_ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray
    counts: np.ndarray


def _step_log_probs(step_fn: StepFn, level: int, query: np.ndarray, prefixes: np.ndarray, size: int) -> np.ndarray:
    log_probs = np.asarray(step_fn(level, query, prefixes))
    if log_probs.ndim != 2 or log_probs.shape[0] != len(query) or log_probs.shape[1] < size:
        raise ValueError(f"step_fn at level {level} must return shape ({len(query)}, >= {size}), got {log_probs.shape}")
    log_probs = np.asarray(log_probs[:, :size], dtype=np.float64)
    if np.isnan(log_probs).any():
        raise ValueError(f"step_fn returned NaN log-probabilities at level {level}")
    return log_probs


def _beam_shortlist(log_probs: np.ndarray, allowed: np.ndarray, keep: int) -> np.ndarray:
    """A superset of each beam's own ``keep`` best allowed codes, as a bool ``(n, K)`` mask.

    A candidate outside its beam's top ``keep`` cannot be in its query's top ``keep`` (the beam's
    better candidates would all beat it), so shortlisting per beam first is exact and shrinks the
    per-query selection from ``beams * K`` candidates to ``beams * keep``. Beams whose cut-off is
    tied (or that have fewer than ``keep`` finite candidates) keep all their allowed codes, and the
    exact selection with its tie rule happens in :func:`_choose_top`.
    """
    size = log_probs.shape[1]
    if size <= keep:
        return allowed
    negated = np.where(allowed, -log_probs, np.inf)
    top = np.argpartition(negated, keep - 1, axis=1)[:, :keep]  # (n, keep), unordered
    cut = np.take_along_axis(negated, top, axis=1).max(axis=1)
    unclear = ~np.isfinite(cut) | ((negated <= cut[:, None]).sum(axis=1) > keep)
    shortlist = np.zeros_like(allowed)
    np.put_along_axis(shortlist, top, True, axis=1)
    if unclear.any():
        shortlist[unclear] = allowed[unclear]
    return shortlist & allowed


def _choose_top(query: np.ndarray, values: np.ndarray, num_queries: int, keep: int) -> np.ndarray:
    """Per query, the ``keep`` highest candidates -> bool ``(C,)``.

    ``query`` ``(C,)`` is non-decreasing and, within a query, candidates are in lexicographic order;
    ties at the cut-off go to the earliest (lexicographically smallest) candidates. A query with at
    most ``keep`` candidates keeps them all: only allowed codes are candidates, so nothing invalid
    can ever be chosen to fill a beam.
    """
    per_query = np.bincount(query, minlength=num_queries)
    if per_query.max(initial=0) <= keep:
        return np.ones(len(values), dtype=bool)
    first = np.cumsum(per_query) - per_query
    position = np.arange(len(values)) - first[query]
    # Negated and padded with +inf: np.partition degrades badly on rows full of -inf, not of +inf.
    padded = np.full((num_queries, int(per_query.max())), np.inf)
    padded[query, position] = -values
    threshold = -np.partition(padded, keep - 1, axis=1)[:, keep - 1]
    threshold = np.where(per_query > keep, threshold, -np.inf)[query]
    above = values > threshold
    at = values == threshold
    # Rank of each tied candidate among its query's ties, in candidate (lexicographic) order.
    ties_before = np.cumsum(at) - at
    ties_rank = ties_before - ties_before[first[query]]
    needed = keep - np.bincount(query, weights=above, minlength=num_queries).astype(np.int64)
    return above | (at & (ties_rank < needed[query]))


def constrained_beam_search(
    step_fn: StepFn,
    trie: SemanticIdTrie,
    num_queries: int,
    beam_size: int,
    top_k: int,
) -> BeamSearchResult:
    """Decode the ``top_k`` best semantic IDs of each of ``num_queries`` queries, only along trie paths.

    At each level every live beam is scored by one ``step_fn`` call (batched over all queries), the
    codes the trie does not allow are removed, and each query keeps its ``beam_size`` best allowed
    extensions (``top_k`` at the last level). A beam without an allowed continuation simply
    disappears: results are never padded with invalid IDs, so ``counts[q] < top_k`` when a query
    reaches fewer IDs. Scores are summed in float64 in level order. Ties: see the module docstring.
    """
    if num_queries < 0:
        raise ValueError(f"num_queries must be >= 0, got {num_queries}")
    if beam_size < 1 or top_k < 1:
        raise ValueError(f"beam_size and top_k must be >= 1, got beam_size={beam_size}, top_k={top_k}")
    if top_k > beam_size:
        raise ValueError(f"top_k ({top_k}) must not exceed beam_size ({beam_size})")
    depth = trie.depth
    sizes = trie.codebook_sizes
    query = np.arange(num_queries, dtype=np.int64)  # (n,) query of each beam; grouped, ascending
    scores = np.zeros(num_queries, dtype=np.float64)  # (n,)
    prefixes = np.zeros((num_queries, 0), dtype=np.int64)  # (n, level), lexicographic within a query
    state = trie.root_state(num_queries)
    for level in range(depth):
        if len(query) == 0:
            break
        size = sizes[level]
        allowed = trie.allowed_mask_at(state)
        live = allowed.any(axis=1)
        if not live.all():  # a beam with no continuation (an empty trie) is dropped before the model runs
            query, scores, prefixes, allowed = query[live], scores[live], prefixes[live], allowed[live]
            state = TrieState(state.depth, state.nodes[live])
            if len(query) == 0:
                break
        log_probs = _step_log_probs(step_fn, level, query, prefixes, size)
        keep = top_k if level == depth - 1 else beam_size
        # Candidates = the allowed (beam, code) pairs, in beam-major order: grouped by query and, since
        # a query's beams are in lexicographic order, lexicographic within each query.
        parent, codes = np.nonzero(_beam_shortlist(log_probs, allowed, keep))
        candidate_scores = scores[parent] + log_probs[parent, codes]
        chosen = _choose_top(query[parent], candidate_scores, num_queries, keep)
        parent, codes, scores = parent[chosen], codes[chosen], candidate_scores[chosen]
        query = query[parent]
        prefixes = np.concatenate([prefixes[parent], codes[:, None]], axis=1)
        state = trie.advance(state, parent, codes)

    semantic_ids = np.full((num_queries, top_k, depth), -1, dtype=np.int64)
    result_scores = np.full((num_queries, top_k), -np.inf)
    rows = np.full((num_queries, top_k), -1, dtype=np.int64)
    counts = np.zeros(num_queries, dtype=np.int64)
    if len(query) and state.depth == depth:
        beam_rows = trie.rows_at(state)
        # Best first; equal scores keep their lexicographic order (lexsort is stable).
        order = np.lexsort((np.arange(len(query)), -scores, query))
        query, scores, prefixes, beam_rows = query[order], scores[order], prefixes[order], beam_rows[order]
        counts = np.bincount(query, minlength=num_queries).astype(np.int64)
        rank = np.arange(len(query)) - (np.cumsum(counts) - counts)[query]
        semantic_ids[query, rank] = prefixes
        result_scores[query, rank] = scores
        rows[query, rank] = beam_rows
    return BeamSearchResult(semantic_ids, result_scores, rows, counts)
