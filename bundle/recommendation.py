"""The item-token recommender's serving path: its three graphs, the hybrid rule and the ranking of a history.

One module for the export's parity check, the service and training's evaluation (numpy only):

- ``fuse``: the hybrid rule, ``(1 - w) * generative + w * dense`` over the beam's candidates;
- ``HistoryExclusion``: items of the history removed from the beam at the last level;
- ``RecommenderGraphs``: what a model offers (hidden state, ID decoder step, dense scores of candidates),
  implemented by ``RecommenderRunner`` (the bundle's ONNX graphs under onnxruntime) and, in training,
  by the torch model, so both rank through the same ``recommend``;
- ``recommend``: histories -> top-k items in the ``generative`` or ``hybrid`` mode;
- ``rankings_agree``: the parity rule for two rankings (near ties may swap); ``near_tie_agreement``
  applies it to a parity check's inputs, with a re-search at ``RECHECK_BEAM`` for near ties at a beam's
  cut-off (the text models' check and the recommender's both use it).

The graphs (docs/bundle.md; B histories, W = max_history, D text width, d hidden, L learned levels):

    sequence_model.onnx  vectors (B, W, D) float32, codes (B, W, L + 1) int64, padding (B, W) bool
                         -> hidden (B, d): the state at the most recent item (histories left-padded)
    decoder_step.onnx    hidden (B, d), codes (B, K, L) int64, level () int64
                         -> log_probs (B, K, V), meaningful up to codebook_sizes[level]
    dense_head.onnx      hidden (B, d), vectors (B, K, D) float32, codes (B, K, L + 1) int64
                         -> scores (B, K): the dense head's score of K candidate items per history
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from bundle.decoding import grouped_step_fn
from bundle.directory import Bundle
from bundle.errors import BundleError
from bundle.manifest import RECOMMEND_MODES, ItemTokenRecommenderEntry
from bundle.sessions import inference_session
from trie import SemanticIdTrie, StepFn, constrained_beam_search


def fuse(generative: np.ndarray, dense: np.ndarray, weight: float) -> np.ndarray:
    """The hybrid rule: ``(1 - weight) * generative + weight * dense`` for the beam's candidates.

    generative, dense: (Q, k) the candidates' summed ID log-probabilities (-inf where a query has no
    candidate) and their dense-head scores. ``dense`` may be the dense log-probabilities over the whole
    catalogue (training's evaluation) or the raw scores (the service): they differ by log Z, one constant
    per query, so the order of a query's candidates, and the weight chosen on validation, are the same.
    weight 0 is the generative order, 1 the dense head's alone. A missing candidate stays -inf.
    """
    present = np.isfinite(generative)
    fused = (1.0 - weight) * np.where(present, generative, 0.0) + weight * np.where(present, dense, 0.0)
    return np.where(present, fused, -np.inf)


class HistoryExclusion:
    """At the last level of the beam search, -inf for the counters that would complete a history item.

    history_ids: per query, the (n_i, L + 1) semantic IDs of its history items. A beam's prefix (its
    query and its L learned codes) is packed into one int64 key and looked up in the sorted keys of all
    (query, history item) pairs.
    """

    def __init__(self, history_ids: Sequence[np.ndarray], codebook_sizes: Sequence[int]) -> None:
        sizes = [int(s) for s in codebook_sizes]
        self.radix = np.cumprod([1, *sizes[:-1][::-1]])[::-1].astype(np.int64)  # (L + 1,)
        lengths = np.asarray([len(h) for h in history_ids], dtype=np.int64)
        query = np.repeat(np.arange(len(history_ids), dtype=np.int64), lengths)
        ids = (np.concatenate([np.asarray(h, dtype=np.int64).reshape(-1, len(sizes)) for h in history_ids])
               if len(query) else np.zeros((0, len(sizes)), dtype=np.int64))
        keys = self._keys(query, ids[:, :-1])
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.counters = ids[:, -1][order]

    def _keys(self, query: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        # radix[0] = prod of all K_l: the query number sits above every packed prefix.
        return query * self.radix[0] + (prefixes * self.radix[1:]).sum(axis=1)

    def apply(self, query: np.ndarray, prefixes: np.ndarray, log_probs: np.ndarray) -> None:
        """Set log_probs[i, counter] = -inf in place for beams i whose prefix + counter is a history item.

        (The beam search may still return such an ID, scored -inf, when a query has fewer allowed IDs
        than the beam: callers drop results scored -inf.)
        """
        keys = self._keys(query, prefixes)
        lo = np.searchsorted(self.keys, keys, side="left")
        hi = np.searchsorted(self.keys, keys, side="right")
        counts = hi - lo
        if not counts.any():
            return
        beam = np.repeat(np.arange(len(keys)), counts)
        offset = np.arange(len(beam)) - np.repeat(np.cumsum(counts) - counts, counts)
        log_probs[beam, self.counters[lo[beam] + offset]] = -np.inf


class RecommenderGraphs(Protocol):
    """The three computations of an item-token recommender (module docstring), numpy in and out."""

    codebook_sizes: tuple[int, ...]
    max_history: int

    def hidden(self, vectors: np.ndarray, codes: np.ndarray, padding: np.ndarray) -> np.ndarray: ...

    def step(self, hidden: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray: ...

    def dense_scores(self, hidden: np.ndarray, vectors: np.ndarray, codes: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class History:
    """One user's history, oldest first: vectors (n, D) float32 and semantic IDs (n, L + 1) int64."""

    vectors: np.ndarray
    semantic_ids: np.ndarray


def history_inputs(histories: Sequence[History], max_history: int, dim: int, width: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sequence model's inputs: the ``max_history`` most recent items of each history, left-padded
    to ``max_history``: vectors (B, W, D) float32, codes (B, W, L + 1) int64, padding (B, W) bool."""
    vectors = np.zeros((len(histories), max_history, dim), dtype=np.float32)
    codes = np.zeros((len(histories), max_history, width), dtype=np.int64)
    padding = np.ones((len(histories), max_history), dtype=bool)
    for i, history in enumerate(histories):
        n = min(len(history.vectors), max_history)
        if n == 0:
            raise ValueError(f"history {i} is empty")
        vectors[i, max_history - n:] = history.vectors[-n:]
        codes[i, max_history - n:] = history.semantic_ids[-n:]
        padding[i, max_history - n:] = False
    return vectors, codes, padding


@dataclass(frozen=True)
class Recommendations:
    """The top-k items per history, best first (-1 / -inf beyond ``counts``).

    rows (Q, k) trie rows; semantic_ids (Q, k, L + 1); scores (Q, k) float64: the summed ID
    log-probability (generative) or the fused score (hybrid); generative, dense (Q, k): both terms.
    """

    rows: np.ndarray
    semantic_ids: np.ndarray
    scores: np.ndarray
    generative: np.ndarray
    dense: np.ndarray
    counts: np.ndarray


def recommend(graphs: RecommenderGraphs, histories: Sequence[History], trie: SemanticIdTrie,
              item_vectors: Callable[[np.ndarray], np.ndarray], *, mode: str, top_k: int, beam_size: int,
              hybrid_weight: float, exclude_history: bool) -> Recommendations:
    """Rank the next item of each history (docs/bundle.md "The item-token recommender").

    The sequence model reads the ``max_history`` most recent items; the ID decoder's constrained beam
    search (beam ``max(beam_size, top_k)``, every complete ID of the beam kept) gives the candidates,
    with the history's own items removed at the last level when ``exclude_history``; ``generative``
    orders them by summed log-probability, ``hybrid`` by ``fuse`` with the dense head's scores.
    item_vectors(rows (n,) int64) -> (n, D) float32: the text vectors of trie rows (for the dense head).
    Raises ValueError on an unknown mode or an empty history.
    """
    if mode not in RECOMMEND_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {list(RECOMMEND_MODES)}")
    sizes = tuple(graphs.codebook_sizes)
    num_levels = len(sizes) - 1
    queries = len(histories)
    dim = int(histories[0].vectors.shape[1]) if queries else 1
    vectors, codes, padding = history_inputs(histories, graphs.max_history, dim, len(sizes))
    hidden = graphs.hidden(vectors, codes, padding) if queries else np.zeros((0, 1), dtype=np.float32)
    exclusion = HistoryExclusion([h.semantic_ids for h in histories], sizes) if exclude_history else None
    beam = max(beam_size, top_k)
    step = grouped_step_fn(lambda q, c, level: graphs.step(hidden[q], c, level), sizes)

    def step_fn(level: int, query: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        out = step(level, query, prefixes)
        if exclusion is not None and level == num_levels:
            out = np.array(out, dtype=np.float32)
            exclusion.apply(np.asarray(query, dtype=np.int64), np.asarray(prefixes, dtype=np.int64), out)
        return out

    result = constrained_beam_search(step_fn, trie, num_queries=queries, beam_size=beam, top_k=beam)
    # An excluded item comes back scored -inf when fewer items are allowed than the beam: no candidate.
    present = np.isfinite(result.scores)  # (Q, beam)
    generative = np.where(present, result.scores, -np.inf)
    dense = np.full(generative.shape, -np.inf)
    if mode == "hybrid" and present.any():
        rows = np.where(present, result.rows, 0)
        flat_vectors = item_vectors(rows.reshape(-1)).astype(np.float32, copy=False)
        scores = graphs.dense_scores(hidden, flat_vectors.reshape(queries, beam, -1),
                                     np.where(present[..., None], result.semantic_ids, 0))
        dense = np.where(present, scores.astype(np.float64), -np.inf)
    ranked = fuse(generative, dense, hybrid_weight) if mode == "hybrid" else generative
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :top_k]  # ties keep beam order
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731 (a local shorthand)
    scores_out = take(ranked)
    valid = np.isfinite(scores_out)
    ids = np.take_along_axis(result.semantic_ids, order[..., None], axis=1)
    return Recommendations(rows=np.where(valid, take(result.rows), -1),
                           semantic_ids=np.where(valid[..., None], ids, -1),
                           scores=np.where(valid, scores_out, -np.inf),
                           generative=np.where(valid, take(generative), -np.inf),
                           dense=np.where(valid, take(dense), -np.inf),
                           counts=valid.sum(axis=1))


def rankings_agree(rows_a: np.ndarray, scores_a: np.ndarray, rows_b: np.ndarray, scores_b: np.ndarray,
                   tolerance: float) -> tuple[bool, bool]:
    """(agree, swapped) for two rankings of one input: rows, scores (k,) best first (-1 / -inf padded).

    Identical, except that two results whose scores differ by less than ``tolerance`` may swap places
    (a near tie, issue 18): wherever the items differ, the scores at that place must differ by less than
    the tolerance, and the item of ``a`` must sit in ``b`` at a score within the tolerance of its own
    (or, absent from ``b``, within the tolerance of ``b``'s last score). ``swapped``: some place differs.
    """
    if len(rows_a) != len(rows_b):
        return False, False
    swapped = False
    for i in np.flatnonzero(rows_a != rows_b):
        swapped = True
        if not abs(scores_a[i] - scores_b[i]) < tolerance:
            return False, True
        where = np.flatnonzero(rows_b == rows_a[i])
        other = scores_b[where[0]] if len(where) else scores_b[-1]
        if not abs(scores_a[i] - other) < tolerance:
            return False, True
    return True, swapped


# The beam of the re-search of an input whose rankings differ beyond swapped near ties (near_tie_agreement):
# the widest beam the service allows.
RECHECK_BEAM = 100


@dataclass(frozen=True)
class NearTies:
    """Inputs of a parity check by outcome (their indices): ``swapped``, identical but for near ties that
    swapped places; ``beam_cut``, different at the check's beam but agreeing when both sides search again
    with ``RECHECK_BEAM`` (a near tie at a beam's cut-off); ``mismatched``, different both times (a real
    difference: the export refuses the bundle)."""

    swapped: tuple[int, ...]
    beam_cut: tuple[int, ...]
    mismatched: tuple[int, ...]


def near_tie_agreement(rows_a: np.ndarray, scores_a: np.ndarray, rows_b: np.ndarray, scores_b: np.ndarray,
                       tolerance: float,
                       recheck: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None = None
                       ) -> NearTies:
    """Compare two sets of rankings, rows and scores (Q, k) best first, input by input with ``rankings_agree``.

    Two searches whose scores differ in the last bits may also part at a beam's cut-off: a near tie
    between the last prefix a beam keeps and the first it drops lets each side keep another prefix, and
    the results below those prefixes differ by more than the tolerance. So an input whose rankings differ
    beyond swapped near ties is handed to ``recheck(i)`` -> (rows_a, scores_a, rows_b, scores_b) (k,) of
    that input searched again by both sides with a wider beam (``RECHECK_BEAM``, which keeps both sides of
    such a cut), and counts as mismatched only when those disagree too; without ``recheck`` it is
    mismatched at once.
    """
    rows_a, rows_b = np.asarray(rows_a), np.asarray(rows_b)
    if rows_a.shape != rows_b.shape:
        return NearTies((), (), tuple(range(max(len(rows_a), len(rows_b)))))
    swapped: list[int] = []
    beam_cut: list[int] = []
    mismatched: list[int] = []
    for i in range(len(rows_a)):
        agree, swap = rankings_agree(rows_a[i], scores_a[i], rows_b[i], scores_b[i], tolerance)
        if agree:
            if swap:
                swapped.append(i)
        elif recheck is not None and rankings_agree(*recheck(i), tolerance)[0]:
            beam_cut.append(i)
        else:
            mismatched.append(i)
    return NearTies(tuple(swapped), tuple(beam_cut), tuple(mismatched))


class RecommenderRunner:
    """The bundle's recommender under onnxruntime (``RecommenderGraphs``) and its item vectors."""

    def __init__(self, sequence_model: Path, decoder_step: Path, dense_head: Path, codebook_sizes: Sequence[int],
                 max_history: int, *, name: str = "recommender", providers: Sequence[str] = ("CPUExecutionProvider",),
                 intra_op_threads: int = 0, allow_spinning: bool = False) -> None:
        self.name = name
        self.codebook_sizes = tuple(int(s) for s in codebook_sizes)
        self.max_history = int(max_history)
        session = {"intra_op_threads": intra_op_threads, "allow_spinning": allow_spinning}
        self._sequence = inference_session(sequence_model, providers, **session)
        self._decoder = inference_session(decoder_step, providers, **session)
        self._dense = inference_session(dense_head, providers, **session)

    @classmethod
    def for_bundle(cls, bundle: Bundle, **options: object) -> RecommenderRunner:
        """The runner of ``bundle``'s recommender (BundleError when it has none)."""
        entry = bundle.manifest.models.get("recommender")
        if not isinstance(entry, ItemTokenRecommenderEntry):
            raise BundleError(f"{bundle.directory}: no item-token recommender in the bundle")
        return cls(bundle.path(entry.sequence_model), bundle.path(entry.decoder_step), bundle.path(entry.dense_head),
                   bundle.manifest.codebook_sizes, entry.max_history, **options)  # type: ignore[arg-type]

    def hidden(self, vectors: np.ndarray, codes: np.ndarray, padding: np.ndarray) -> np.ndarray:
        """vectors (B, W, D), codes (B, W, L + 1), padding (B, W) bool -> hidden (B, d) float32."""
        (hidden,) = self._sequence.run(["hidden"], {"vectors": np.ascontiguousarray(vectors, dtype=np.float32),
                                                    "codes": np.ascontiguousarray(codes, dtype=np.int64),
                                                    "padding": np.ascontiguousarray(padding, dtype=bool)})
        return hidden

    def step(self, hidden: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
        """hidden (B, d), codes (B, K, L) -> log-probabilities (B, K, codebook_sizes[level])."""
        (log_probs,) = self._decoder.run(["log_probs"], {"hidden": np.ascontiguousarray(hidden, dtype=np.float32),
                                                         "codes": np.ascontiguousarray(codes, dtype=np.int64),
                                                         "level": np.asarray(level, dtype=np.int64)})
        return log_probs[..., : self.codebook_sizes[level]]

    def dense_scores(self, hidden: np.ndarray, vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """hidden (B, d), candidates' vectors (B, K, D) and codes (B, K, L + 1) -> scores (B, K) float32."""
        (scores,) = self._dense.run(["scores"], {"hidden": np.ascontiguousarray(hidden, dtype=np.float32),
                                                 "vectors": np.ascontiguousarray(vectors, dtype=np.float32),
                                                 "codes": np.ascontiguousarray(codes, dtype=np.int64)})
        return scores

    def step_fn(self, hidden: np.ndarray) -> StepFn:
        """The trie StepFn of the ID decoder for hidden states (B, d) (no history exclusion)."""
        return grouped_step_fn(lambda q, c, level: self.step(hidden[q], c, level), self.codebook_sizes)


def read_item_vectors(bundle: Bundle) -> np.ndarray:
    """The bundle's item vectors (N, D) float32 (row i = trie row i; manifest ``item_vectors``), checked against
    the manifest; BundleError when the bundle has none."""
    spec = bundle.manifest.item_vectors
    if spec is None:
        raise BundleError(f"{bundle.directory}: the bundle has no item vectors (manifest item_vectors is null)")
    path = bundle.path(spec.file)
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read the item vectors ({exc})") from None
    expected = (bundle.manifest.num_documents, spec.dim)
    if vectors.shape != expected or vectors.dtype not in (np.float16, np.float32):
        raise BundleError(f"{path}: {vectors.dtype} {vectors.shape}, expected float16/float32 {expected}")
    return vectors.astype(np.float32)


def read_item_id_offsets(bundle: Bundle) -> np.ndarray | None:
    """The recommender's item ID offsets (N, D) float32 (manifest ``models.recommender.item_id_offsets``; row i
    belongs to trie row i), or None when its entry has none; BundleError for a file of another shape."""
    entry = bundle.manifest.models.get("recommender")
    if not isinstance(entry, ItemTokenRecommenderEntry) or entry.item_id_offsets is None:
        return None
    path = bundle.path(entry.item_id_offsets)
    try:
        offsets = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read the item ID offsets ({exc})") from None
    spec = bundle.manifest.item_vectors
    expected = (bundle.manifest.num_documents, spec.dim if spec is not None else -1)
    if offsets.shape != expected or offsets.dtype != np.float32:
        raise BundleError(f"{path}: {offsets.dtype} {offsets.shape}, expected float32 {expected}")
    return offsets


def recommender_item_vectors(item_vectors: Callable[[np.ndarray], np.ndarray], offsets: np.ndarray | None
                             ) -> Callable[[np.ndarray], np.ndarray]:
    """What the recommender's graphs read for trie rows: rows (n,) int64 -> (n, D) float32, the item vectors
    plus the item ID offsets of the rows that have one (rows < len(offsets): the items the recommender was
    trained with; a document added later has its text vector alone, as a cold item had in training)."""
    if offsets is None:
        return item_vectors

    def vectors(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.array(item_vectors(rows), dtype=np.float32)  # a copy: the offsets are added in place
        known = rows < len(offsets)
        out[known] += offsets[rows[known]]
        return out

    return vectors


def mean_pooled(states: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Text vectors from encoder states (B, S, d) and mask (B, S): mean over the real tokens, then
    L2-normalised (training's text vectors: training.recommendation.items.text_vectors) -> (B, d) float32."""
    mask = attention_mask.astype(np.float32)[..., None]  # (B, S, 1)
    pooled = (states * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32)

