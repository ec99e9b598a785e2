"""POST /recommend with the bundle's item-token recommender (docs/bundle.md "The item-token recommender").

A history is a list of items, each its text vector and semantic ID: for a doc_id, the vector stored
with it (the bundle's item vectors, or the one computed when it was added through
/index-documents), plus the item's ID offset when the recommender was trained with item ID embeddings
(bundle items only: ``bundle.recommendation.recommender_item_vectors``), and its ID in the live index;
for a text of ``history_texts``, the vector of the indexer's encoder, mean-pooled as training's text
vectors were, and the ID a new document with that text would get (greedy codes, then the next free
counter; it is not stored). The ranking itself is
``bundle.recommendation.recommend``, the function the export's parity check ranked with, over the
live trie: items added after the export are reachable by the ID decoder and scored by the dense head.

Requests are micro-batched (one worker thread); a batch reads one index snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from bundle import History, ItemTokenRecommenderEntry, RecommenderRunner, recommend, recommender_item_vectors
from service.batching import MicroBatcher
from service.engine import Ranking, RecommendQuery, ranked_hits
from service.index import LiveIndex
from service.schemas import encode_hits
from service.telemetry import Metrics

MODEL = "recommender"


class RecommendationRanker:
    """Ranks histories with the recommender's graphs over the live index (micro-batched)."""

    def __init__(self, runner: RecommenderRunner, entry: ItemTokenRecommenderEntry, index: LiveIndex,
                 metrics: Metrics, *, exclude_history: bool, batch_max_size: int, batch_max_wait_s: float,
                 queue_max_depth: int, item_id_offsets: np.ndarray | None = None) -> None:
        """item_id_offsets: (N, D) float32 of the bundle's N items, or None (manifest ``item_id_offsets``)."""
        self._runner = runner
        self._offsets = item_id_offsets
        self.entry = entry
        self._index = index
        self._metrics = metrics
        self.exclude_history = exclude_history
        self._batcher: MicroBatcher[RecommendQuery, Ranking] = MicroBatcher(
            MODEL, self.rank_now, max_size=batch_max_size, max_wait_s=batch_max_wait_s,
            max_queue=queue_max_depth, metrics=metrics)

    def start(self) -> None:
        """Start the batcher (on the running loop)."""
        self._batcher.start()

    async def stop(self) -> None:
        """Stop the batcher."""
        await self._batcher.stop()

    async def rank(self, query: RecommendQuery) -> Ranking:
        """The top-k items for one history (queued, micro-batched)."""
        return await self._batcher.submit(query)

    def rank_now(self, queries: Sequence[RecommendQuery]) -> list[Ranking]:
        """Rank a batch synchronously: queries with the same mode and beam width share one beam search."""
        snapshot = self._index.snapshot  # one consistent index version for the whole batch
        rankings: list[Ranking | None] = [None] * len(queries)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault((query.mode, max(self.entry.beam_size, query.k)), []).append(i)
        for (mode, beam_size), members in groups.items():
            started = time.perf_counter()
            vectors = recommender_item_vectors(snapshot.vectors_of, self._offsets)
            result = recommend(self._runner, [queries[i].history for i in members], snapshot.trie, vectors,
                               mode=mode, top_k=max(queries[i].k for i in members),
                               beam_size=beam_size, hybrid_weight=self.entry.hybrid_weight,
                               exclude_history=self.exclude_history)
            self._metrics.beam_search_seconds.labels(model=MODEL).observe(time.perf_counter() - started)
            for j, i in enumerate(members):
                hits = ranked_hits(self._metrics, MODEL, snapshot, result.rows[j], result.semantic_ids[j],
                                   result.scores[j], int(result.counts[j]), queries[i].k)
                rankings[i] = Ranking(encode_hits(hits), snapshot.version)
        return [r for r in rankings if r is not None]

    def history_of_rows(self, rows: Sequence[int]) -> History:
        """The history of indexed items (trie rows, oldest first). The model reads the ``max_history`` most
        recent; every item's ID is kept (the history exclusion covers the whole history), while the vectors
        of older items, never read, are left at zero."""
        snapshot = self._index.snapshot
        rows_array = np.asarray(list(rows), dtype=np.int64)
        recent = rows_array[-self.entry.max_history:]
        assert snapshot.bundle_vectors is not None  # a bundle with a recommender has item vectors
        vectors = np.zeros((len(rows_array), snapshot.bundle_vectors.shape[1]), dtype=np.float32)
        vectors[len(rows_array) - len(recent):] = recommender_item_vectors(snapshot.vectors_of, self._offsets)(recent)
        return History(vectors, snapshot.trie.semantic_ids_of(rows_array))
