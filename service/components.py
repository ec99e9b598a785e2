"""Everything a request handler may touch, built once per process from the settings and the bundle."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.bundle import Manifest, indexer_files, load_documents, load_manifest
from service.cache import CachedDocuments, CachedRanker, ResultCache
from service.engine import DocumentSource, Engine, EngineLimits, IndexDocuments, ModelRanker, Ranker
from service.errors import BundleError
from service.index import LiveIndex
from service.metrics import Metrics
from service.model import OnnxModel, TextTokenizer, choose_providers
from service.redis_link import RedisLink
from service.replication import LocalWriter, StreamWriter
from service.settings import ServiceSettings
from service.store import DocumentStore
from trie import SemanticIdTrie, TrieError

logger = logging.getLogger(__name__)


def default_store_path(manifest: Manifest) -> Path:
    """var/store-<bundle fingerprint>.sqlite3 under the working directory (one store per bundle)."""
    return Path("var") / f"store-{manifest.fingerprint}.sqlite3"


@dataclass
class Components:
    """The engine and everything it is built from; ``start`` builds, ``stop`` releases."""

    settings: ServiceSettings
    manifest: Manifest
    metrics: Metrics
    engine: Engine
    ranker: ModelRanker
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
        manifest = load_manifest(settings.bundle_dir)
        # Only the indexer may run the int8 encoder; search and recommend stay fp32 (docs/bundle.md).
        indexer, indexer_precision = indexer_files(manifest, settings.indexer_precision)
        graphs = {**manifest.models, "indexer": indexer}
        table = await asyncio.to_thread(load_documents, manifest)
        try:
            trie = await asyncio.to_thread(SemanticIdTrie.load, manifest.trie, mmap=True)
        except (TrieError, OSError, ValueError) as exc:
            raise BundleError(f"{manifest.trie}: cannot load the trie ({exc})") from exc
        if tuple(trie.codebook_sizes) != manifest.codebook_sizes:
            raise BundleError(f"{manifest.trie}: codebook sizes {tuple(trie.codebook_sizes)} differ from the "
                              f"manifest's {manifest.codebook_sizes}")
        store_path = settings.store_path or default_store_path(manifest)
        store = DocumentStore(store_path, bundle_fingerprint=manifest.fingerprint, first_row=len(table),
                              index_version=manifest.index_version, synchronous=settings.store_synchronous)
        index = await asyncio.to_thread(LiveIndex, table, trie, store, counter_size=manifest.codebook_sizes[-1])
        providers = choose_providers(settings.execution_provider)
        max_history_length = int(manifest.raw.get("max_history_length", manifest.max_document_length))
        lengths = {"indexer": manifest.max_document_length, "retriever": manifest.max_query_length,
                   "recommender": max_history_length}
        tokenizers: dict[int, TextTokenizer] = {}
        models: dict[str, OnnxModel] = {}
        for name, files in graphs.items():
            length = lengths[name]
            tokenizer = tokenizers.setdefault(length, TextTokenizer(manifest.tokenizer, length))
            models[name] = await asyncio.to_thread(
                OnnxModel, files, tokenizer, codebook_sizes=manifest.codebook_sizes, providers=providers,
                intra_op_threads=settings.intra_op_threads, allow_spinning=settings.allow_spinning)
        searchers = {name: model for name, model in models.items() if name != "indexer"}
        ranker = ModelRanker(searchers, index, metrics, beam_size=settings.beam_size,
                             batch_max_size=settings.batch_max_size,
                             batch_max_wait_s=settings.batch_max_wait_ms / 1000.0,
                             queue_max_depth=settings.queue_max_depth)
        # Warm up: the first onnxruntime run of a session allocates; keep that out of request latency.
        for name in searchers:
            await asyncio.to_thread(ranker.rank_now, name, [("warm up", 1)])
        await asyncio.to_thread(models["indexer"].greedy_codes, ["warm up"], 1)
        front_ranker: Ranker = ranker
        documents: DocumentSource = IndexDocuments(index)
        links: list[RedisLink] = []
        writer: LocalWriter | StreamWriter
        replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        if settings.redis_url:
            link = RedisLink(settings.redis_url, timeout_s=settings.redis_timeout_s,
                             retry_interval_s=settings.redis_retry_interval_s, metrics=metrics)
            read_link = RedisLink(settings.redis_url, timeout_s=settings.redis_timeout_s,
                                  retry_interval_s=settings.redis_retry_interval_s, metrics=metrics,
                                  extra_read_timeout_s=settings.stream_block_ms / 1000.0)
            links = [link, read_link]
            if settings.cache_ttl_s > 0:
                cache = ResultCache(link, namespace=f"lmindexer:v1:{manifest.fingerprint}",
                                    ttl_s=settings.cache_ttl_s, metrics=metrics)
                front_ranker = CachedRanker(ranker, cache)
                documents = CachedDocuments(documents, cache)
            writer = StreamWriter(index, link=link, read_link=read_link,
                                  stream_key=f"{settings.stream_key_prefix}:{manifest.fingerprint}",
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
                        max_history=manifest.max_history, history_separator=manifest.history_separator,
                        models=list(searchers))
        ranker.start()
        await writer.start()
        # Everything loaded so far lives as long as the process: keep it out of every later GC pass
        # (a full collection over a large bundle's objects is a latency spike).
        gc.collect()
        gc.freeze()
        logger.info("serving bundle %s (fingerprint %s): %d documents, index version %d, providers %s, "
                    "indexer precision %s (setting %s), redis %s, store %s", manifest.directory,
                    manifest.fingerprint, len(index.snapshot), index.snapshot.version, providers, indexer_precision,
                    settings.indexer_precision, _redact(settings.redis_url) if settings.redis_url else "off",
                    store_path)
        return cls(settings=settings, manifest=manifest, metrics=metrics, engine=engine, ranker=ranker,
                   writer=writer, store=store, providers=providers, indexer_precision=indexer_precision,
                   links=links)

    async def stop(self) -> None:
        """Stop background tasks and close connections and the store."""
        await self.ranker.stop()
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
        return {"manifest": self.manifest.raw, "bundle_fingerprint": self.manifest.fingerprint,
                "num_documents": len(snapshot), "index_version": snapshot.version,
                "models": sorted(self.manifest.models), "execution_providers": self.providers,
                "indexer_precision": self.indexer_precision,
                "replication": self.writer.status(), "started_at": self.started_at}


def _redact(url: str) -> str:
    """A Redis URL without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
