"""Everything a request handler may touch, built once per process from the settings and the bundle."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundle import (
    Bundle,
    BundleError,
    ItemTokenRecommenderEntry,
    OnnxRunner,
    RecommenderRunner,
    TextModelEntry,
    TextTokenizer,
    TextVectorRunner,
    choose_providers,
    read_item_id_offsets,
    read_item_vectors,
)
from service.cache import CachedDocuments, CachedRanker, ResultCache
from service.engine import (
    DocumentSource,
    Engine,
    EngineLimits,
    HybridSearch,
    IndexDocuments,
    ModelRanker,
    Ranker,
    RecommendQuery,
)
from service.index import LiveIndex
from service.recommender import RecommendationRanker
from service.redis_link import RedisLink
from service.replication import LocalWriter, StreamWriter
from service.settings import ServiceSettings
from service.store import DocumentStore
from service.telemetry import Metrics
from trie import SemanticIdTrie, TrieError

logger = logging.getLogger(__name__)


def default_store_path(bundle: Bundle) -> Path:
    """var/store-<bundle fingerprint>.sqlite3 under the working directory (one store per bundle)."""
    return Path("var") / f"store-{bundle.fingerprint}.sqlite3"


def choose_indexer_precision(bundle: Bundle, precision: str) -> str:
    """The indexer encoder to run for the precision setting (auto, fp32, int8): "fp32" or "int8".

    auto picks the int8 encoder when the bundle has one, else fp32; int8 on a bundle without one raises
    BundleError, saying why the export left it out.
    """
    if precision not in ("auto", "fp32", "int8"):
        raise ValueError(f"unknown indexer precision {precision!r}")
    entry = bundle.manifest.models["indexer"]
    assert isinstance(entry, TextModelEntry)  # the manifest admits no other kind of indexer
    int8 = entry.int8_encoder
    has_int8 = int8 is not None and int8.file is not None
    if precision == "fp32" or (precision == "auto" and not has_int8):
        return "fp32"
    if not has_int8:
        why = int8.skipped if int8 is not None else "the bundle was exported without one"
        raise BundleError(f"indexer_precision is int8 (LMINDEXER_INDEXER_PRECISION) but {bundle.directory} has no "
                          f"int8 indexer encoder (manifest.json models.indexer.int8_encoder; {why}); use auto or "
                          "fp32, or re-export the bundle with indexer_int8 on")
    return "int8"


@dataclass
class Components:
    """The engine and everything it is built from; ``start`` builds, ``stop`` releases."""

    settings: ServiceSettings
    bundle: Bundle
    metrics: Metrics
    engine: Engine
    ranker: ModelRanker
    recommendations: RecommendationRanker | None
    writer: LocalWriter | StreamWriter
    store: DocumentStore
    providers: list[str]
    indexer_precision: str  # "fp32" or "int8": the encoder graph POST /index-documents runs
    links: list[RedisLink] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    @classmethod
    async def start(cls, settings: ServiceSettings, metrics: Metrics | None = None) -> Components:
        """Load the bundle, replay the store into the trie, load the models, connect to Redis."""
        metrics = metrics or Metrics()
        bundle = Bundle.open(settings.bundle_dir)
        manifest = bundle.manifest
        # Only the indexer may run the int8 encoder; search and recommend stay fp32 (docs/bundle.md).
        precision = choose_indexer_precision(bundle, settings.indexer_precision)
        table = await asyncio.to_thread(bundle.documents)
        try:
            trie = await asyncio.to_thread(SemanticIdTrie.load, bundle.trie_path, mmap=True)
        except (TrieError, OSError, ValueError) as exc:
            raise BundleError(f"{bundle.trie_path}: cannot load the trie ({exc})") from exc
        if tuple(trie.codebook_sizes) != manifest.codebook_sizes:
            raise BundleError(f"{bundle.trie_path}: codebook sizes {tuple(trie.codebook_sizes)} differ from the "
                              f"manifest's {manifest.codebook_sizes}")
        store_path = settings.store_path or default_store_path(bundle)
        store = DocumentStore(store_path, bundle_fingerprint=bundle.fingerprint, first_row=len(table),
                              index_version=manifest.index_version, synchronous=settings.store_synchronous)
        recommender_entry = manifest.models.get("recommender")
        item_vectors = None
        if manifest.item_vectors is not None:  # the recommender's item tokens and hybrid search read them
            item_vectors = await asyncio.to_thread(read_item_vectors, bundle)
        index = await asyncio.to_thread(LiveIndex, table, trie, store, item_vectors)
        providers = choose_providers(settings.execution_provider.value)
        # Each model reads its inputs cut where it was trained and parity-checked: the manifest's
        # max_input_length of its own entry. Models with the same length share one tokenizer.
        tokenizers: dict[int, TextTokenizer] = {}
        models: dict[str, OnnxRunner] = {}
        for name, entry in manifest.models.items():
            if not isinstance(entry, TextModelEntry):
                continue
            tokenizer = tokenizers.setdefault(entry.max_input_length,
                                              TextTokenizer(bundle.path(manifest.tokenizer), entry.max_input_length))
            models[name] = await asyncio.to_thread(
                OnnxRunner.for_model, bundle, name, int8=name == "indexer" and precision == "int8",
                tokenizer=tokenizer, providers=providers, intra_op_threads=settings.intra_op_threads,
                allow_spinning=settings.allow_spinning)
        searchers = {name: model for name, model in models.items() if name != "indexer"}
        text_vectors = await asyncio.to_thread(TextVectorRunner.for_bundle, bundle, providers=providers,
                                               intra_op_threads=settings.intra_op_threads)
        retriever_entry = manifest.models.get("retriever")
        search = retriever_entry.search if isinstance(retriever_entry, TextModelEntry) else None
        hybrid: dict[str, HybridSearch] = {}
        if search is not None and "retriever" in searchers and manifest.item_vectors is not None:
            query_vectors = await asyncio.to_thread(
                _query_vector_encoder, bundle, models["indexer"], precision, text_vectors, providers, settings)
            hybrid["retriever"] = HybridSearch(
                weight=search.hybrid_weight, query_vectors=query_vectors,
                dense_candidates=settings.search_dense_candidates or search.dense_candidates)
        ranker = ModelRanker(searchers, index, metrics, beam_size=settings.beam_size,
                             batch_max_size=settings.batch_max_size,
                             batch_max_wait_s=settings.batch_max_wait_ms / 1000.0,
                             queue_max_depth=settings.queue_max_depth, hybrid=hybrid)
        recommendations: RecommendationRanker | None = None
        if isinstance(recommender_entry, ItemTokenRecommenderEntry):
            runner = await asyncio.to_thread(
                RecommenderRunner.for_bundle, bundle, providers=providers,
                intra_op_threads=settings.intra_op_threads, allow_spinning=settings.allow_spinning)
            exclude = (recommender_entry.exclude_history if settings.recommend_exclude_history is None
                       else settings.recommend_exclude_history)
            offsets = await asyncio.to_thread(read_item_id_offsets, bundle)
            recommendations = RecommendationRanker(
                runner, recommender_entry, index, metrics, exclude_history=exclude,
                batch_max_size=settings.batch_max_size, batch_max_wait_s=settings.batch_max_wait_ms / 1000.0,
                queue_max_depth=settings.queue_max_depth, item_id_offsets=offsets)
        # Warm up: the first onnxruntime run of a session allocates; keep that out of request latency.
        for name in searchers:
            await asyncio.to_thread(ranker.rank_now, name, [("warm up", 1)])
            if ranker.has_hybrid(name):
                await asyncio.to_thread(ranker.rank_now, name, [("warm up", 1)], "hybrid")
        if recommendations is not None and len(index.snapshot):
            await asyncio.to_thread(recommendations.rank_now, [RecommendQuery(
                recommendations.history_of_rows([0]), 1, recommendations.entry.default_mode)])
        await asyncio.to_thread(models["indexer"].greedy_codes, ["warm up"], 1)
        front_ranker: Ranker = ranker
        documents: DocumentSource = IndexDocuments(index)
        links: list[RedisLink] = []
        writer: LocalWriter | StreamWriter
        result_cache: ResultCache | None = None
        replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        if settings.redis_url:
            link = RedisLink(settings.redis_url, timeout_s=settings.redis_timeout_s,
                             retry_interval_s=settings.redis_retry_interval_s, metrics=metrics)
            read_link = RedisLink(settings.redis_url, timeout_s=settings.redis_timeout_s,
                                  retry_interval_s=settings.redis_retry_interval_s, metrics=metrics,
                                  extra_read_timeout_s=settings.stream_block_ms / 1000.0)
            links = [link, read_link]
            if settings.cache_ttl_s > 0:
                cache = ResultCache(link, namespace=f"lmindexer:v1:{bundle.fingerprint}",
                                    ttl_s=settings.cache_ttl_s, metrics=metrics)
                result_cache = cache
                front_ranker = CachedRanker(ranker, cache)
                documents = CachedDocuments(documents, cache)
            writer = StreamWriter(index, link=link, read_link=read_link,
                                  stream_key=f"{settings.stream_key_prefix}:{bundle.fingerprint}",
                                  replica_id=replica_id, metrics=metrics, block_ms=settings.stream_block_ms,
                                  write_timeout_s=settings.write_timeout_s,
                                  retry_interval_s=settings.redis_retry_interval_s)
            if not await link.ping():
                logger.warning("Redis at %s is unreachable at start: serving without cache; index writes "
                               "answer 503 until it is back", _redact(settings.redis_url))
        else:
            writer = LocalWriter(index, metrics)
        engine = Engine(index=index, ranker=front_ranker, documents=documents, writer=writer,
                        indexer=models["indexer"], metrics=metrics,
                        limits=EngineLimits(max_query_chars=settings.max_query_chars,
                                            max_history_items=settings.max_history_items,
                                            max_batch_documents=settings.max_batch_documents,
                                            max_text_chars=settings.max_text_chars),
                        recommender=recommendations, models=list(searchers), text_vectors=text_vectors,
                        cache=result_cache, search=search, hybrid_search=ranker.has_hybrid("retriever"))
        ranker.start()
        if recommendations is not None:
            recommendations.start()
        await writer.start()
        # Everything loaded so far lives as long as the process: keep it out of every later GC pass
        # (a full collection over a large bundle's objects is a latency spike).
        gc.collect()
        gc.freeze()
        logger.info("serving bundle %s (fingerprint %s): %d documents, index version %d, providers %s, "
                    "indexer precision %s (setting %s), redis %s, store %s", bundle.directory,
                    bundle.fingerprint, len(index.snapshot), index.snapshot.version, providers, precision,
                    settings.indexer_precision, _redact(settings.redis_url) if settings.redis_url else "off",
                    store_path)
        return cls(settings=settings, bundle=bundle, metrics=metrics, engine=engine, ranker=ranker,
                   recommendations=recommendations, writer=writer, store=store, providers=providers,
                   indexer_precision=precision, links=links)

    async def stop(self) -> None:
        """Stop background tasks and close connections and the store."""
        await self.ranker.stop()
        if self.recommendations is not None:
            await self.recommendations.stop()
        await self.writer.stop()
        for link in self.links:
            await link.close()
        await asyncio.to_thread(self.store.close)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, report): ready = bundle loaded and store writable; Redis is reported, not required."""
        store_ok = await asyncio.to_thread(self.store.check_writable)
        report: dict[str, Any] = {"bundle_loaded": True, "store_writable": store_ok,
                                  "replication": self.writer.status()}
        if self.links:
            report["redis"] = "up" if await self.links[0].ping() else "down"
        else:
            report["redis"] = "not configured"
        return store_ok, report

    def info(self) -> dict[str, Any]:
        """GET /info: manifest, document count, index version, runtime facts."""
        snapshot = self.engine.index.snapshot
        return {"manifest": self.bundle.manifest.to_dict(), "bundle_fingerprint": self.bundle.fingerprint,
                "num_documents": len(snapshot), "index_version": snapshot.version,
                "models": sorted(self.bundle.manifest.models), "execution_providers": self.providers,
                "indexer_precision": self.indexer_precision,
                "replication": self.writer.status(), "started_at": self.started_at}


def _query_vector_encoder(bundle: Bundle, indexer: OnnxRunner, precision: str, text_vectors: TextVectorRunner | None,
                          providers: list[str], settings: ServiceSettings) -> Callable[[list[str]], Any]:
    """texts -> (Q, D) query vectors made as the bundle's item vectors were (manifest item_vectors): the bundle's
    text encoder, or the indexer's encoder mean-pooled, always its fp32 graph (a second session of it when
    POST /index-documents runs the int8 one: search runs fp32)."""
    if text_vectors is not None:
        return text_vectors.vectors
    if precision == "int8":
        indexer = OnnxRunner.for_model(bundle, "indexer", providers=providers,
                                       intra_op_threads=settings.intra_op_threads,
                                       allow_spinning=settings.allow_spinning)
    return indexer.mean_vectors


def _redact(url: str) -> str:
    """A Redis URL without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
