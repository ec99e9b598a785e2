"""Every Prometheus metric the service exports. Names, labels and buckets live only here.

Rules (the Grafana dashboard is built from these names):
- prefix ``lmindexer_``; seconds are the unit; counters end in ``_total``;
- labels have low cardinality: ``endpoint`` is the route template (``/documents/{doc_id}``, never a
  doc id), ``status`` the HTTP status code, ``result`` one of hit|miss|error;
- queue wait and inference time are separate histograms; end-to-end latency is measured per request.

Each ``Metrics`` instance owns its own ``CollectorRegistry``: the global registry breaks as soon as
two apps are built in one process (tests), with "Duplicated timeseries in CollectorRegistry".
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The `*_created` timestamp series double the exposition and no dashboard uses them.
disable_created_metrics()

# Request latencies: 0.5 ms (a cached answer) to 10 s (a stuck batch); denser where the targets are.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# The model names used as the `model` label (the bundle's three jobs).
MODEL_NAMES: tuple[str, ...] = ("indexer", "retriever", "recommender")
SEARCH_MODES: tuple[str, ...] = ("generative", "hybrid")
CACHE_KINDS: tuple[str, ...] = ("result", "document")
CACHE_RESULTS: tuple[str, ...] = ("hit", "miss", "error")
REDIS_OPERATIONS: tuple[str, ...] = ("cache_get", "cache_set", "stream_publish", "stream_read", "ping")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The service's metrics on a private registry.

    Attributes are the prometheus_client objects themselves; call sites use ``.labels(...)``,
    ``.inc()``, ``.observe()`` and ``.set()`` directly so each name appears once, here.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # --- HTTP edge -------------------------------------------------------------------------
        self.requests = Counter(
            "lmindexer_requests_total", "HTTP requests by endpoint (route template) and status code.",
            ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram(
            "lmindexer_request_duration_seconds", "End-to-end HTTP request latency by endpoint.",
            ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.errors = Counter(
            "lmindexer_errors_total", "Error responses by error type (the error body's error_type).",
            ["error_type"], registry=r)
        # --- micro-batching and inference ------------------------------------------------------
        self.queue_seconds = Histogram(
            "lmindexer_queue_wait_seconds", "Time a request waited in the micro-batch queue, by model.",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.inference_seconds = Histogram(
            "lmindexer_inference_duration_seconds",
            "Time of one batched model call (encoder + decoding), by model.",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram(
            "lmindexer_batch_size", "Requests per batched model call, by model.",
            ["model"], buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.beam_search_seconds = Histogram(
            "lmindexer_beam_search_duration_seconds",
            "Time of one batched constrained beam search (decoder steps included), by model.",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.hybrid_search_seconds = Histogram(
            "lmindexer_hybrid_search_duration_seconds",
            "Time of the hybrid part of one batched search (query text vectors, dense top-N over every "
            "document, fusion with the beam's candidates), by model; the beam search is not included.",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.search_queries = Counter(
            "lmindexer_search_queries_total",
            "POST /search queries answered (cached or not; invalid ones not counted), by mode (generative|hybrid).",
            ["mode"], registry=r)
        self.queue_depth = Gauge(
            "lmindexer_queue_depth", "Requests waiting in the micro-batch queue, by model.",
            ["model"], registry=r)
        self.overloaded = Counter(
            "lmindexer_overloaded_total", "Requests refused with 429 because the queue was full, by model.",
            ["model"], registry=r)
        # --- cache and Redis -------------------------------------------------------------------
        self.cache_lookups = Counter(
            "lmindexer_cache_lookups_total",
            "Cache lookups by kind (result|document) and result (hit|miss|error).",
            ["kind", "result"], registry=r)
        self.redis_errors = Counter(
            "lmindexer_redis_errors_total",
            "Failed Redis operations by operation (one of REDIS_OPERATIONS).",
            ["operation"], registry=r)
        self.redis_up = Gauge(
            "lmindexer_redis_up", "1 when the last Redis operation succeeded, 0 when it failed.", registry=r)
        # --- index -----------------------------------------------------------------------------
        self.documents_indexed = Counter(
            "lmindexer_documents_indexed_total",
            "Documents given a (new) semantic ID, by source (api: this replica's /index-documents; "
            "replication: applied from the Redis stream).",
            ["source"], registry=r)
        self.index_documents = Gauge(
            "lmindexer_index_documents", "Documents in the live index (IDs in the trie).", registry=r)
        self.index_version = Gauge(
            "lmindexer_index_version", "The live index version (bumped by every applied update).", registry=r)
        self.invalid_ids = Counter(
            "lmindexer_invalid_ids_total",
            "Semantic IDs produced that are not in the index (must stay 0), by model.",
            ["model"], registry=r)
        self.nonfinite_scores = Counter(
            "lmindexer_nonfinite_scores_total",
            "Hits dropped because the model scored them -inf or NaN (never sent: JSON has no such number), "
            "by model.", ["model"], registry=r)
        self.replication_lag_seconds = Gauge(
            "lmindexer_replication_lag_seconds",
            "Age of the last index update applied from the Redis stream when it was applied.", registry=r)
        # Pre-create label sets so dashboards show 0, not "no data", before the first event.
        for model in MODEL_NAMES:
            self.invalid_ids.labels(model=model)
            self.nonfinite_scores.labels(model=model)
            self.queue_depth.labels(model=model).set(0)
        for mode in SEARCH_MODES:
            self.search_queries.labels(mode=mode)
        for kind in CACHE_KINDS:
            for result in CACHE_RESULTS:
                self.cache_lookups.labels(kind=kind, result=result)
        for source in ("api", "replication"):
            self.documents_indexed.labels(source=source)
        for operation in REDIS_OPERATIONS:
            self.redis_errors.labels(operation=operation)

    def render(self) -> bytes:
        """The text exposition of every metric (the body of GET /metrics)."""
        return generate_latest(self.registry)
