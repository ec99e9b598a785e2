"""The engine: search, recommend, index documents, look documents up. No HTTP here.

Request flow (service/README.md has the picture):
    route -> Engine.search -> CachedRanker.rank (Redis, keyed by index version and mode)
          -> ModelRanker.rank -> MicroBatcher.submit -> worker thread:
             encoder once per query (bundle.OnnxRunner), then trie.constrained_beam_search with
             OnnxRunner.step_fn (the live beams grouped per query, one decoder call per level);
             hybrid queries also get their text vector and bundle.retrieval.hybrid_search over the
             live dense index (bundle item vectors + the vectors of added documents)
Blocking work (onnxruntime, beam search, SQLite) runs only in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bundle import RECOMMEND_MODES, SEARCH_MODES, History, OnnxRunner, SearchSettings, TextVectorRunner, hybrid_search
from service.batching import MicroBatcher
from service.errors import (
    BadRequestError,
    ConflictError,
    IndexFullError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceError,
)
from service.index import IndexedDocument, LiveIndex, NewDocument, UpdateOutcome
from service.schemas import DocumentBody, SearchHit, encode_document, encode_hits
from service.telemetry import Metrics
from trie import FALLBACK_PREFIXES, CounterExhaustedError, assign_ids, constrained_beam_search

if TYPE_CHECKING:
    from service.cache import ResultCache
    from service.recommender import RecommendationRanker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranking:
    """The top-k documents for one model input, as the JSON array ``SearchResponse.results`` (ready to send
    or cache; encoded by service.schemas.encode_hits)."""

    results_json: bytes
    index_version: int
    cached: bool = False


class Ranker(Protocol):
    """Rank documents for a (normalised) model input."""

    @property
    def index_version(self) -> int: ...

    async def rank(self, model: str, text: str, k: int, mode: str = "generative") -> Ranking: ...


class DocumentSource(Protocol):
    """Look a document up by doc_id."""

    @property
    def index_version(self) -> int: ...

    async def document_json(self, doc_id: str) -> bytes | None: ...


class IndexWriter(Protocol):
    """Apply index updates durably (locally, or through the Redis stream to every replica)."""

    async def write(self, documents: list[NewDocument]) -> UpdateOutcome: ...


@dataclass(frozen=True)
class RecommendQuery:
    """One /recommend input: the history (oldest first), k and the ranking mode."""

    history: History
    k: int
    mode: str


@dataclass(frozen=True)
class _Query:
    text: str
    k: int
    mode: str = "generative"


@dataclass(frozen=True)
class HybridSearch:
    """What a model's hybrid search needs (docs/bundle.md "Search modes"): the rule's ``weight``, N of the dense
    candidates (``max(N, k)`` are taken), and the encoder of the query vectors (texts -> (Q, D) float32, made as
    the bundle's item vectors were). Blocking; called from the batch's worker thread."""

    weight: float
    dense_candidates: int
    query_vectors: Callable[[list[str]], np.ndarray]


def normalise_text(text: str) -> str:
    """Collapse whitespace runs: the tokenizers split on whitespace anyway, so the model input and
    the cache key stay the same for queries that differ only in spacing."""
    return " ".join(text.split())


class ModelRanker:
    """Ranks with the bundle's models: one micro-batcher per model, beam search over the live trie, and the
    hybrid rule over the live dense index for ``hybrid`` queries of the models in ``hybrid``."""

    def __init__(self, models: dict[str, OnnxRunner], index: LiveIndex, metrics: Metrics, *, beam_size: int,
                 batch_max_size: int, batch_max_wait_s: float, queue_max_depth: int,
                 hybrid: dict[str, HybridSearch] | None = None) -> None:
        self._index = index
        self._metrics = metrics
        self._beam_size = beam_size
        self._models = models
        self._hybrid = dict(hybrid or {})
        self._batchers: dict[str, MicroBatcher[_Query, Ranking]] = {
            name: MicroBatcher(name, self._batch_runner(model), max_size=batch_max_size,
                               max_wait_s=batch_max_wait_s, max_queue=queue_max_depth, metrics=metrics)
            for name, model in models.items()
        }

    @property
    def index_version(self) -> int:
        """The live index version."""
        return self._index.snapshot.version

    def has_hybrid(self, model: str) -> bool:
        """Whether ``model`` can rank in the hybrid mode (the bundle has item vectors)."""
        return model in self._hybrid and self._index.snapshot.dense is not None

    def start(self) -> None:
        """Start the batchers (on the running loop)."""
        for batcher in self._batchers.values():
            batcher.start()

    async def stop(self) -> None:
        """Stop the batchers."""
        for batcher in self._batchers.values():
            await batcher.stop()

    async def rank(self, model: str, text: str, k: int, mode: str = "generative") -> Ranking:
        """The top-k documents for ``text`` according to ``model`` in ``mode`` (queued, micro-batched)."""
        batcher = self._batchers.get(model)
        if batcher is None:
            raise NotFoundError(f"this bundle has no {model} model")
        return await batcher.submit(_Query(text, k, mode))

    def rank_now(self, model: str, queries: list[tuple[str, int]], mode: str = "generative") -> list[Ranking]:
        """Rank a batch synchronously, bypassing the queue (readiness checks, benchmarks)."""
        return self._batch_runner(self._models[model])([_Query(t, k, mode) for t, k in queries])

    def _batch_runner(self, model: OnnxRunner) -> Callable[[list[_Query]], Sequence[Ranking]]:
        def run(queries: list[_Query]) -> list[Ranking]:
            snapshot = self._index.snapshot  # one consistent index version for the whole batch
            encoded = model.encode([q.text for q in queries])
            rankings: list[Ranking | None] = [None] * len(queries)
            hybrid_members = [i for i, q in enumerate(queries) if q.mode == "hybrid"]
            hybrid = self._hybrid.get(model.name)
            query_vectors = np.zeros((len(queries), 0), dtype=np.float32)
            hybrid_seconds = 0.0
            if hybrid_members:
                if hybrid is None or snapshot.dense is None:  # the engine refuses such requests first
                    raise RuntimeError(f"hybrid search is not available for the {model.name} model")
                started = time.perf_counter()
                vectors = hybrid.query_vectors([queries[i].text for i in hybrid_members])
                query_vectors = np.zeros((len(queries), vectors.shape[1]), dtype=np.float32)
                query_vectors[hybrid_members] = vectors
                hybrid_seconds += time.perf_counter() - started
            # Queries asking for more than beam_size results get a wider beam; group by beam width so a
            # query's results never depend on what its batch mates asked for.
            groups: dict[int, list[int]] = {}
            for i, q in enumerate(queries):
                groups.setdefault(max(self._beam_size, q.k), []).append(i)
            for beam_size, members in groups.items():
                index = np.asarray(members)
                sub = encoded.rows(index)
                # hybrid reads every complete ID of the beam (its candidates), generative the first k
                wants_beam = any(queries[i].mode == "hybrid" for i in members)
                top_k = beam_size if wants_beam else max(queries[i].k for i in members)
                started = time.perf_counter()
                result = constrained_beam_search(model.step_fn(sub), snapshot.trie, num_queries=len(members),
                                                 beam_size=beam_size, top_k=top_k)
                self._metrics.beam_search_seconds.labels(model=model.name).observe(time.perf_counter() - started)
                by_candidates: dict[int, list[int]] = {}  # hybrid queries by their dense top-N, max(N, k)
                for j, i in enumerate(members):
                    if queries[i].mode == "hybrid":
                        assert hybrid is not None
                        by_candidates.setdefault(max(hybrid.dense_candidates, queries[i].k), []).append(j)
                    else:
                        hits = self._hits(model.name, snapshot, result, j, queries[i].k)
                        rankings[i] = Ranking(encode_hits(hits), snapshot.version)
                for dense_candidates, positions in by_candidates.items():
                    assert hybrid is not None
                    started = time.perf_counter()
                    chosen = [members[j] for j in positions]
                    counts = result.counts[positions]
                    beam_rows = np.where(np.arange(result.rows.shape[1])[None, :] < counts[:, None],
                                         result.rows[positions], -1)
                    ranking = hybrid_search(beam_rows, result.scores[positions], query_vectors[chosen],
                                            snapshot.dense, weight=hybrid.weight, dense_candidates=dense_candidates,
                                            top_k=max(queries[i].k for i in chosen))
                    hybrid_seconds += time.perf_counter() - started
                    for n, i in enumerate(chosen):
                        rows = ranking.rows[n]
                        valid = rows >= 0
                        semantic_ids = np.full((len(rows), len(snapshot.trie.codebook_sizes)), -1, dtype=np.int64)
                        if valid.any():
                            semantic_ids[valid] = snapshot.trie.semantic_ids_of(rows[valid])
                        hits = ranked_hits(self._metrics, model.name, snapshot, rows, semantic_ids,
                                           ranking.scores[n], int(ranking.counts[n]), queries[i].k)
                        rankings[i] = Ranking(encode_hits(hits), snapshot.version)
            if hybrid_members:
                self._metrics.hybrid_search_seconds.labels(model=model.name).observe(hybrid_seconds)
            return [r for r in rankings if r is not None]

        return run

    def _hits(self, model: str, snapshot: Any, result: Any, j: int, k: int) -> list[SearchHit]:
        return ranked_hits(self._metrics, model, snapshot, result.rows[j], result.semantic_ids[j], result.scores[j],
                           int(result.counts[j]), k)


def ranked_hits(metrics: Metrics, model: str, snapshot: Any, rows: np.ndarray, semantic_ids: np.ndarray,
                scores: np.ndarray, count: int, k: int) -> list[SearchHit]:
    """The hits of one ranking: rows (n,) trie rows, semantic_ids (n, L + 1), scores (n,), the first
    ``count`` valid; at most ``k``. An ID not in the index or a non-finite score is counted, never returned."""
    hits = []
    for rank in range(min(k, count)):
        semantic_id = tuple(int(c) for c in semantic_ids[rank])
        document = snapshot.document_at(int(rows[rank]))
        if document is None or document.semantic_id != semantic_id:
            # Must never happen: the beam search only walks the trie. Counted, never returned.
            metrics.invalid_ids.labels(model=model).inc()
            logger.error("beam search produced an ID not in the index: %s", semantic_id)
            continue
        score = float(scores[rank])
        if not math.isfinite(score):
            # -inf: a code the model gives probability 0 (the trie allowed it, the model did not); it
            # would rank last anyway, and JSON has no -inf. Counted, never returned.
            metrics.nonfinite_scores.labels(model=model).inc()
            logger.warning("dropped a hit scored %s by the %s model: %s", score, model, semantic_id)
            continue
        hits.append(SearchHit(doc_id=document.doc_id, score=score, semantic_id=list(semantic_id),
                              document=DocumentBody(doc_id=document.doc_id, text=document.text,
                                                    metadata=document.metadata)))
    return hits


class IndexDocuments:
    """The DocumentSource of the live index (bundle + added documents)."""

    def __init__(self, index: LiveIndex) -> None:
        self._index = index

    @property
    def index_version(self) -> int:
        """The live index version."""
        return self._index.snapshot.version

    async def document_json(self, doc_id: str) -> bytes | None:
        """The document as JSON bytes (a DocumentResponse), or None."""
        document = self._index.snapshot.document(doc_id)
        return None if document is None else encode_document(document.as_dict())


@dataclass(frozen=True)
class SearchOutcome:
    """What /search and /recommend return, before HTTP framing."""

    ranking: Ranking
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IndexingOutcome:
    """What /index-documents returns."""

    documents: list[IndexedDocument]
    index_version: int


@dataclass(frozen=True)
class EngineLimits:
    """Request limits (from the settings)."""

    max_query_chars: int = 2000
    max_history_items: int = 1000
    max_batch_documents: int = 1000
    max_text_chars: int = 100_000


class Engine:
    """The service's operations, independent of HTTP."""

    def __init__(self, *, index: LiveIndex, ranker: Ranker, documents: DocumentSource, writer: IndexWriter,
                 indexer: OnnxRunner, metrics: Metrics, limits: EngineLimits,
                 recommender: RecommendationRanker | None, models: Sequence[str],
                 text_vectors: TextVectorRunner | None = None, cache: ResultCache | None = None,
                 search: SearchSettings | None = None, hybrid_search: bool = False) -> None:
        self.index = index
        self._ranker = ranker
        self._documents = documents
        self._writer = writer
        self._indexer = indexer
        self._metrics = metrics
        self.limits = limits
        self._recommender = recommender  # None without a recommender in the bundle
        # The recommender's own text encoder; None: the indexer's encoder run makes the vectors.
        self._text_vectors = text_vectors
        # The retriever's search modes (manifest models.retriever.search) and whether hybrid is served.
        self._search = search
        self._hybrid_search = hybrid_search
        self._cache = cache  # Redis result cache (recommendations keyed by their input and the index version)
        self._models = set(models)
        # One indexer call at a time: it already uses every core.
        self._indexer_slot = asyncio.Semaphore(1)
        self.refresh_gauges()

    @property
    def index_version(self) -> int:
        """The live index version."""
        return self.index.snapshot.version

    def refresh_gauges(self) -> None:
        """Publish the index size and version gauges."""
        snapshot = self.index.snapshot
        self._metrics.index_documents.set(len(snapshot))
        self._metrics.index_version.set(snapshot.version)

    def _check_text(self, text: str, what: str) -> str:
        normalised = normalise_text(text)
        if not normalised:
            raise BadRequestError(f"{what} must not be empty or whitespace only")
        if len(text) > self.limits.max_query_chars:
            raise BadRequestError(f"{what} is {len(text)} characters long; the limit is "
                                  f"{self.limits.max_query_chars}")
        return normalised

    async def search(self, query: str, k: int, mode: str | None = None) -> SearchOutcome:
        """The top-k documents for a query (retriever model) in ``mode`` (generative or hybrid; None: the
        manifest's models.retriever.search.default_mode)."""
        if "retriever" not in self._models:
            raise NotFoundError("this bundle has no retriever model; POST /search is not available")
        mode = mode or (self._search.default_mode if self._search is not None else "generative")
        if mode not in SEARCH_MODES:
            raise BadRequestError(f"mode {mode!r} is not one of {list(SEARCH_MODES)}",
                                  details=[{"loc": ["body", "mode"], "msg": f"unknown mode {mode!r}"}])
        if mode == "hybrid" and not self._hybrid_search:
            raise BadRequestError("mode 'hybrid' is not available: this bundle has no item vectors (manifest "
                                  "item_vectors is null); use mode 'generative', or re-export the bundle",
                                  details=[{"loc": ["body", "mode"], "msg": "hybrid needs the bundle's item vectors"}])
        text = self._check_text(query, "query")
        self._metrics.search_queries.labels(mode=mode).inc()
        return SearchOutcome(await self._ranker.rank("retriever", text, k, mode))

    async def recommend(self, history: list[str] | None, history_texts: list[str] | None, k: int,
                        mode: str | None = None) -> SearchOutcome:
        """The top-k next items for a user's history (the item-token recommender; service/recommender.py).

        ``history`` (doc_ids) and ``history_texts`` are both oldest first, as clients keep them. Unknown
        doc_ids are skipped and named in the warnings; when none is known: 404. The model reads the
        ``max_history`` most recent items (the manifest's), a warning says so when more were given; items
        of the whole history are excluded from the results when the exclude-history setting is on.
        ``mode``: generative or hybrid; None: the manifest's default_mode.
        """
        recommender = self._recommender
        if recommender is None:
            raise NotFoundError("this bundle has no recommender model; POST /recommend is not available")
        if (history is None) == (history_texts is None):
            raise BadRequestError("give exactly one of history (doc_ids) or history_texts",
                                  details=[{"loc": ["body", "history"], "msg": "give history or history_texts"}])
        field_name = "history" if history is not None else "history_texts"
        items = history if history is not None else history_texts
        assert items is not None
        if not items:
            raise BadRequestError(f"{field_name} must not be empty",
                                  details=[{"loc": ["body", field_name], "msg": "must hold at least one item"}])
        if len(items) > self.limits.max_history_items:
            raise BadRequestError(f"{field_name} has {len(items)} items; the limit is {self.limits.max_history_items}",
                                  details=[{"loc": ["body", field_name], "msg": "too many items"}])
        mode = mode or recommender.entry.default_mode
        if mode not in RECOMMEND_MODES:
            raise BadRequestError(f"mode {mode!r} is not one of {list(RECOMMEND_MODES)}",
                                  details=[{"loc": ["body", "mode"], "msg": f"unknown mode {mode!r}"}])
        warnings: list[str] = []
        max_history = recommender.entry.max_history
        snapshot = self.index.snapshot
        if history is not None:
            rows: list[int] = []
            unknown: list[str] = []
            for doc_id in history:
                row = snapshot.row_of_doc_id(doc_id)
                if row is None:
                    unknown.append(doc_id)
                else:
                    rows.append(row)
            if not rows:
                raise NotFoundError(f"none of the history's doc_ids is indexed: {unknown[:20]}",
                                    details=[{"unknown_doc_ids": unknown[:100]}])
            if unknown:
                warnings.append(f"skipped {len(unknown)} unknown doc_id(s): {unknown[:20]}")
            items_read = len(rows)
            request: dict[str, Any] = {"rows": rows, "k": k, "mode": mode}
        else:
            texts = [normalise_text(t) for t in items]
            if not all(texts):
                raise BadRequestError("history_texts must not hold empty or whitespace-only texts",
                                      details=[{"loc": ["body", "history_texts"], "msg": "empty text"}])
            items_read = len(texts)
            request = {"texts": texts[-max_history:], "k": k, "mode": mode}
        if items_read > max_history:
            warnings.append(f"the model reads the {max_history} most recent of the {items_read} history items")
        key = self._cache.key("recommend", snapshot.version, request) if self._cache is not None else None
        if self._cache is not None and key is not None:
            cached = await self._cache.get("result", key)
            if cached is not None:
                return SearchOutcome(Ranking(cached, snapshot.version, cached=True), warnings)
        if history is not None:
            user_history = recommender.history_of_rows(request["rows"])
        else:
            user_history = await self._history_of_texts(request["texts"])
        ranking = await recommender.rank(RecommendQuery(user_history, k, mode))
        if self._cache is not None:
            # under the version the ranking was computed against (see CachedRanker.rank)
            await self._cache.set(self._cache.key("recommend", ranking.index_version, request), ranking.results_json)
        return SearchOutcome(ranking, warnings)

    def _codes_and_vectors(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Greedy codes (B, L), fallback codes (B, A) and, when the bundle has item vectors, text vectors (B, D)
        of texts (docs/bundle.md: the indexer's encoder run, or the bundle's text encoder). Blocking."""
        has_vectors = self.index.snapshot.bundle_vectors is not None
        own_encoder = self._text_vectors is not None
        codes, ranked, vectors = self._indexer.index_texts(texts, FALLBACK_PREFIXES,
                                                           vectors=has_vectors and not own_encoder)
        if has_vectors and self._text_vectors is not None:
            vectors = self._text_vectors.vectors(texts)
        return codes, ranked, vectors

    async def _history_of_texts(self, texts: list[str]) -> History:
        """Items given by their texts: the indexer's encoder gives their vectors (mean-pooled, as training's)
        and greedy codes; the ID is the one a new document would get (next free counter), not stored."""
        async with self._indexer_slot:
            codes, ranked, vectors = await asyncio.to_thread(self._codes_and_vectors, texts)
        trie = self.index.snapshot.trie
        try:
            ids = assign_ids(trie, codes, ranked)
        except CounterExhaustedError:  # every candidate prefix is full: the learned codes still describe the item
            ids = np.concatenate([codes, np.zeros((len(codes), 1), dtype=np.int64)], axis=1)
        return History(vectors, ids)

    async def document_json(self, doc_id: str) -> bytes:
        """A document by doc_id as JSON bytes; 404 when unknown."""
        value = await self._documents.document_json(doc_id)
        if value is None:
            raise NotFoundError(f"no document with doc_id {doc_id!r}")
        return value

    def _check_batch(self, documents: list[tuple[str, str, dict[str, Any]]]) -> None:
        if not documents:
            raise BadRequestError("documents must not be empty")
        if len(documents) > self.limits.max_batch_documents:
            raise PayloadTooLargeError(f"{len(documents)} documents in one batch; the limit is "
                                       f"{self.limits.max_batch_documents}")
        seen: set[str] = set()
        duplicates: list[str] = []
        problems: list[dict[str, Any]] = []
        for i, (doc_id, text, _) in enumerate(documents):
            if doc_id in seen:
                duplicates.append(doc_id)
            seen.add(doc_id)
            if not doc_id.strip():
                problems.append({"loc": ["documents", i, "doc_id"], "msg": "doc_id must not be empty"})
            if not text.strip():
                problems.append({"loc": ["documents", i, "text"], "msg": "text must not be empty"})
            elif len(text) > self.limits.max_text_chars:
                problems.append({"loc": ["documents", i, "text"],
                                 "msg": f"text longer than {self.limits.max_text_chars} characters"})
        if duplicates:
            raise BadRequestError(f"duplicate doc_id(s) in one batch: {sorted(set(duplicates))[:20]}")
        if problems:
            raise BadRequestError(f"{len(problems)} invalid document(s); nothing was written", details=problems)

    async def index_documents(self, documents: list[tuple[str, str, dict[str, Any]]]) -> IndexingOutcome:
        """Give new (or changed) documents semantic IDs and store them durably; all-or-nothing.

        Same doc_id and text keep their ID; a changed text gets a new ID (the old one is removed).
        """
        self._check_batch(documents)
        unchanged = self.index.unchanged(documents)
        if unchanged is not None:  # an idempotent retry: nothing to compute, nothing to write
            return IndexingOutcome(unchanged, self.index_version)
        snapshot = self.index.snapshot
        needs_codes = [i for i, (doc_id, text, _) in enumerate(documents)
                       if (snapshot.document(doc_id) is None or snapshot.text_of(doc_id) != text)]
        codes = np.zeros((0, 0), dtype=np.int64)
        ranked = np.zeros((0, 0), dtype=np.int64)
        vectors = np.zeros((0, 0), dtype=np.float32)
        if needs_codes:
            texts = [normalise_text(documents[i][1]) for i in needs_codes]
            # With item vectors, each new document's text vector comes from the same encoder run.
            async with self._indexer_slot:
                codes, ranked, vectors = await asyncio.to_thread(self._codes_and_vectors, texts)
        position = {i: j for j, i in enumerate(needs_codes)}
        new_documents = []
        for i, (doc_id, text, metadata) in enumerate(documents):
            j = position.get(i)
            new_documents.append(NewDocument(
                doc_id, text, metadata,
                codes=() if j is None else tuple(int(c) for c in codes[j]),
                alternatives=() if j is None else tuple(int(c) for c in ranked[j]),
                vector=() if j is None else tuple(float(v) for v in vectors[j])))
        outcome = await self._writer.write(new_documents)
        if outcome.error is not None:
            error = ConflictError if outcome.error_type == ConflictError.error_type else IndexFullError
            raise error(outcome.error)
        self.refresh_gauges()
        return IndexingOutcome(outcome.documents, outcome.index_version)


__all__ = ["DocumentSource", "Engine", "EngineLimits", "HybridSearch", "IndexDocuments", "IndexWriter",
           "IndexingOutcome", "ModelRanker", "Ranker", "Ranking", "RecommendQuery", "SearchOutcome", "ServiceError",
           "normalise_text", "ranked_hits"]
