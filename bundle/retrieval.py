"""Search modes of the retriever: the hybrid rule and the dense index it reads (numpy only).

One module for training's evaluation (which chooses the weight on a development split), the contract
tests and the service, so what was tuned is what is served:

- ``hybrid_scores``: the fusion rule (below);
- ``DenseIndex``: the documents' text vectors as one float32 matrix of unit rows (normalised once), row i =
  trie row i; documents added later are appended (a new view; views taken before are unchanged);
- ``search_candidates``: per query, the beam's candidates (beam order), then the dense top-N documents not
  in the beam (decreasing cosine), with both terms of the rule;
- ``rank_candidates``: fuse and order them (ties keep candidate order); ``hybrid_search``: both.

The rule (``hybrid``). For a query q and a candidate document d:

    score(q, d) = (1 - w) * cos(v_q, v_d) + w * p(d | q)

- cos: the cosine of the text vectors of q and d (the bundle's item vectors; the query's is made by the same
  encoder and pooling, manifest ``item_vectors``), in [-1, 1]; 0 when d has no vector;
- p: the retriever's probability of d's semantic ID given q, exp(summed log-probability over the levels), in
  [0, 1], for d among the complete IDs of the constrained beam search; 0 for a document outside the beam;
- w: ``hybrid_weight`` in [0, 1] (manifest ``models.retriever.search``), chosen on a development split.

Candidates: the beam's complete IDs (beam ``max(beam_size, k)``) and the ``max(dense_candidates, k)``
documents of highest cosine over every indexed document. A candidate with neither term (outside the beam and
without a vector) is dropped. Both terms are absolute: neither depends on the other documents ranked for q,
so scores are comparable across queries and one threshold cuts weak matches for every query (a document
scores at most 1; an exact match the retriever is sure of scores near 1). w = 0 is dense retrieval (the
top-k by cosine); w = 1 is the beam order, then the dense order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def hybrid_scores(dense: np.ndarray, generative: np.ndarray, weight: float) -> np.ndarray:
    """The hybrid rule (module docstring), elementwise: ``(1 - weight) * cos + weight * p``.

    dense: cosines (any shape); NaN or +-inf where the document has no vector (the term is then 0).
    generative: the beam's summed log-probabilities; -inf or NaN for a document outside the beam (p = 0).
    Returns float64 scores, -inf where a document has neither term.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    dense = np.asarray(dense, dtype=np.float64)
    generative = np.asarray(generative, dtype=np.float64)
    has_dense = np.isfinite(dense)
    in_beam = np.isfinite(generative)
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.where(in_beam, np.clip(np.exp(np.where(in_beam, generative, 0.0)), 0.0, 1.0), 0.0)
    cos = np.where(has_dense, np.clip(np.where(has_dense, dense, 0.0), -1.0, 1.0), 0.0)
    score = (1.0 - weight) * cos + weight * p
    return np.where(has_dense | in_beam, score, -np.inf)


class _Storage:
    """The buffer behind DenseIndex views: rows ``[0, filled)`` written, capacity for appends beyond."""

    def __init__(self, matrix: np.ndarray, present: np.ndarray, filled: int) -> None:
        self.matrix = matrix  # (capacity, D) float32, C-contiguous, unit rows (zeros where absent)
        self.present = present  # (capacity,) bool
        self.filled = filled


class DenseIndex:
    """Unit text vectors by trie row (read-only view of ``count`` rows; ``with_rows`` makes the next view).

    ``matrix`` (count, D) float32 C-contiguous, each row L2-normalised once; ``present`` (count,) bool: False
    for a document without a vector (zero or non-finite vector, e.g. one stored before the bundle had
    vectors), which is never a dense candidate and has no cosine. The buffer grows geometrically, so adding
    documents costs O(added) amortised; rows of a view never change (a re-indexed document's row is
    rewritten in a copy).
    """

    def __init__(self, storage: _Storage, count: int) -> None:
        self._storage = storage
        self.count = count

    @classmethod
    def build(cls, vectors: np.ndarray) -> DenseIndex:
        """The index of vectors (N, D) (any float dtype), row i = trie row i."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (N, D), got shape {vectors.shape}")
        matrix, present = _unit_rows(vectors)
        return cls(_Storage(matrix, present, len(matrix)), len(matrix))

    @property
    def dim(self) -> int:
        """D, the vectors' width."""
        return int(self._storage.matrix.shape[1])

    @property
    def matrix(self) -> np.ndarray:
        """(count, D) float32 unit rows (zeros where absent)."""
        return self._storage.matrix[: self.count]

    @property
    def present(self) -> np.ndarray:
        """(count,) bool: rows that have a vector."""
        return self._storage.present[: self.count]

    def __len__(self) -> int:
        return self.count

    @property
    def capacity(self) -> int:
        """Rows allocated in the buffer this view shares (>= count; appends fill it in place)."""
        return len(self._storage.matrix)

    def with_rows(self, rows: np.ndarray, vectors: np.ndarray) -> DenseIndex:
        """A new view with ``vectors`` (m, D) at trie rows ``rows`` (m,): rows past ``count`` are appended
        (rows skipped in between have no vector), rows below are replaced. This view is unchanged."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        vectors = np.asarray(vectors).reshape(len(rows), -1) if len(rows) else np.zeros((0, self.dim), np.float32)
        if len(rows) == 0:
            return self
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors of width {vectors.shape[1]} for an index of width {self.dim}")
        if rows.min() < 0:
            raise ValueError("rows must be >= 0")
        count = max(self.count, int(rows.max()) + 1)
        storage = self._storage
        capacity = len(storage.matrix)
        # In place only when every row is new, nothing was appended after this view, and it fits.
        if rows.min() >= self.count and storage.filled == self.count and count <= capacity:
            target = storage
        else:
            # A copy (a replaced row, or this view is not the newest) keeps the capacity unless the rows do not
            # fit; growing on every copy made repeated re-indexing of one document grow the buffer 1.5x per
            # request (a schemathesis run reached a 32 GiB allocation).
            if count > capacity:
                capacity = max(count, capacity + capacity // 2, 64)
            matrix = np.zeros((capacity, self.dim), dtype=np.float32)
            present = np.zeros(capacity, dtype=bool)
            matrix[: self.count] = storage.matrix[: self.count]
            present[: self.count] = storage.present[: self.count]
            target = _Storage(matrix, present, self.count)
        unit, has = _unit_rows(vectors)
        target.matrix[self.count: count] = 0.0  # rows skipped by this update stay without a vector
        target.present[self.count: count] = False
        target.matrix[rows] = unit
        target.present[rows] = has
        target.filled = count
        return DenseIndex(target, count)

    def _query_units(self, query_vectors: np.ndarray) -> np.ndarray:
        query_vectors = np.asarray(query_vectors, dtype=np.float32).reshape(-1, self.dim)
        unit, _ = _unit_rows(query_vectors)
        return unit

    def nearest(self, query_vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` rows of highest cosine for each query (Q, D): rows (Q, m) int64 and cosines (Q, m)
        float64, best first (ties: lower row first), m = min(n, rows with a vector)."""
        queries = self._query_units(query_vectors)
        present = self.present
        m = min(int(n), int(present.sum()))
        if m <= 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0))
        sims = queries @ self.matrix.T  # (Q, count) float32: one matrix product per batch
        if not present.all():
            sims[:, ~present] = -np.inf
        # The m-th largest cosine of each query; every row at or above it is sorted by (cosine, row), so a tie
        # at the cut goes to the lower rows (argpartition alone would pick any of them).
        cut = np.partition(sims, sims.shape[1] - m, axis=1)[:, sims.shape[1] - m]
        rows = np.zeros((len(queries), m), dtype=np.int64)
        values = np.zeros((len(queries), m))
        for q in range(len(queries)):
            above = np.flatnonzero(sims[q] >= cut[q])
            order = np.lexsort((above, -sims[q, above]))[:m]
            rows[q], values[q] = above[order], sims[q, above[order]]
        return rows, values

    def cosines(self, query_vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosines (Q, C) float64 of each query (Q, D) with its candidate rows (Q, C); NaN for a row that is
        -1 (padding), beyond the view, or without a vector."""
        queries = self._query_units(query_vectors)
        rows = np.asarray(rows, dtype=np.int64).reshape(len(queries), -1)
        if rows.size == 0 or self.count == 0:
            return np.full(rows.shape, np.nan)
        valid = (rows >= 0) & (rows < self.count)
        safe = np.where(valid, rows, 0)
        valid &= self.present[safe]
        values = np.einsum("qcd,qd->qc", self.matrix[safe], queries).astype(np.float64)
        return np.where(valid, values, np.nan)


def _unit_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 C-contiguous L2-normalised copy, present): rows that are zero or not finite become 0, absent."""
    matrix = np.array(vectors, dtype=np.float32, order="C", copy=True)
    finite = np.isfinite(matrix).all(axis=1)
    matrix[~finite] = 0.0
    norms = np.linalg.norm(matrix, axis=1)
    present = finite & (norms > 0)
    matrix[present] /= norms[present, None]
    return matrix, present


@dataclass(frozen=True)
class SearchCandidates:
    """The candidates of Q queries, C slots each, beam candidates first (beam order), then dense-only ones
    (decreasing cosine); -1 / -inf / NaN padding at the end.

    rows (Q, C) trie rows; generative (Q, C) summed log-probability of the beam (-inf outside it);
    dense (Q, C) cosine with the query (NaN without a vector)."""

    rows: np.ndarray
    generative: np.ndarray
    dense: np.ndarray


@dataclass(frozen=True)
class SearchRanking:
    """The top-k of Q queries, best first (-1 / -inf beyond ``counts``): rows (Q, k) trie rows, scores (Q, k)
    the fused score, generative (Q, k) and dense (Q, k) its terms as in SearchCandidates, counts (Q,)."""

    rows: np.ndarray
    scores: np.ndarray
    generative: np.ndarray
    dense: np.ndarray
    counts: np.ndarray


def search_candidates(beam_rows: np.ndarray, beam_log_probs: np.ndarray, query_vectors: np.ndarray,
                      index: DenseIndex, dense_candidates: int) -> SearchCandidates:
    """The hybrid candidates (module docstring) of Q queries.

    beam_rows (Q, B) int64: the trie rows of the beam's complete IDs, beam order (-1 padding);
    beam_log_probs (Q, B): their summed log-probabilities; query_vectors (Q, D): the queries' text vectors;
    dense_candidates: N of the dense top-N (callers pass max(N, k)).
    """
    beam_rows = np.asarray(beam_rows, dtype=np.int64)
    queries = beam_rows.shape[0]
    beam_rows = beam_rows.reshape(queries, -1)
    beam_scores = np.where(beam_rows >= 0, np.asarray(beam_log_probs, dtype=np.float64).reshape(queries, -1),
                           -np.inf)
    top_rows, _ = index.nearest(query_vectors, dense_candidates)  # (Q, m)
    in_beam = (top_rows[:, :, None] == beam_rows[:, None, :]).any(axis=2) if beam_rows.shape[1] else \
        np.zeros(top_rows.shape, dtype=bool)
    rows = np.concatenate([beam_rows, np.where(in_beam, -1, top_rows)], axis=1)
    generative = np.concatenate([beam_scores, np.full(top_rows.shape, -np.inf)], axis=1)
    # Padding to the end, every query's order otherwise kept: beam order, then decreasing cosine.
    order = np.argsort(rows < 0, axis=1, kind="stable")
    rows = np.take_along_axis(rows, order, axis=1)
    generative = np.take_along_axis(generative, order, axis=1)
    generative = np.where(rows >= 0, generative, -np.inf)
    dense = index.cosines(query_vectors, rows) if queries else np.zeros(rows.shape)
    return SearchCandidates(rows=rows, generative=generative, dense=dense)


def rank_candidates(candidates: SearchCandidates, weight: float, top_k: int) -> SearchRanking:
    """The top-k candidates by ``hybrid_scores`` (ties keep candidate order)."""
    scores = np.where(candidates.rows >= 0, hybrid_scores(candidates.dense, candidates.generative, weight), -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731 (a local shorthand)
    ranked = take(scores)
    valid = np.isfinite(ranked)
    return SearchRanking(rows=np.where(valid, take(candidates.rows), -1), scores=np.where(valid, ranked, -np.inf),
                         generative=np.where(valid, take(candidates.generative), -np.inf),
                         dense=np.where(valid, take(candidates.dense), np.nan), counts=valid.sum(axis=1))


def hybrid_search(beam_rows: np.ndarray, beam_log_probs: np.ndarray, query_vectors: np.ndarray, index: DenseIndex,
                  *, weight: float, dense_candidates: int, top_k: int) -> SearchRanking:
    """The hybrid ranking of Q queries: ``search_candidates`` with ``max(dense_candidates, top_k)`` dense
    candidates, then ``rank_candidates``."""
    candidates = search_candidates(beam_rows, beam_log_probs, query_vectors, index, max(dense_candidates, top_k))
    return rank_candidates(candidates, weight, top_k)
