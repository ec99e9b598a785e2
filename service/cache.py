"""Redis caching as wrappers: same protocol as the wrapped object, never a branch in the engine.

Keys: ``lmindexer:v1:{bundle fingerprint}:{kind}:{index version}:{sha256 of the normalised request}``.
Because the index version is in the key, an index update makes every older entry unreachable
without scanning or deleting keys (the TTL reclaims the memory); because the bundle fingerprint is
in it, replicas serving another bundle never share entries. Cache failures are counted
(``lmindexer_cache_lookups_total{result="error"}``, ``lmindexer_redis_errors_total``) and then
ignored: the wrapped object answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging

from service.engine import DocumentSource, Ranker, Ranking
from service.redis_link import RedisLink, RedisUnavailable
from service.telemetry import Metrics

logger = logging.getLogger(__name__)


class ResultCache:
    """Get/set of byte values in Redis with a TTL; failures become misses, counted as errors."""

    def __init__(self, link: RedisLink, *, namespace: str, ttl_s: int, metrics: Metrics) -> None:
        self._link = link
        self._namespace = namespace
        self._ttl_s = ttl_s
        self._metrics = metrics

    def key(self, kind: str, index_version: int, request: object) -> str:
        """The cache key of a normalised request (any JSON-serialisable value)."""
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return f"{self._namespace}:{kind}:{index_version}:{digest}"

    async def get(self, kind: str, key: str) -> bytes | None:
        """The cached value, or None on a miss or a Redis failure."""
        try:
            value = await self._link.call("cache_get", lambda c: c.get(key))
        except RedisUnavailable:
            self._metrics.cache_lookups.labels(kind=kind, result="error").inc()
            return None
        self._metrics.cache_lookups.labels(kind=kind, result="miss" if value is None else "hit").inc()
        return value

    async def set(self, key: str, value: bytes) -> None:
        """Store a value with the TTL; a Redis failure is counted and ignored."""
        if self._ttl_s <= 0:
            return
        with contextlib.suppress(RedisUnavailable):  # already counted by the link
            await self._link.call("cache_set", lambda c: c.set(key, value, ex=self._ttl_s))


class CachedRanker:
    """A Ranker whose rankings are cached by (model, index version, normalised text, k, mode)."""

    def __init__(self, inner: Ranker, cache: ResultCache) -> None:
        self._inner = inner
        self._cache = cache

    @property
    def index_version(self) -> int:
        """The live index version of the wrapped ranker."""
        return self._inner.index_version

    async def rank(self, model: str, text: str, k: int, mode: str = "generative") -> Ranking:
        """The cached ranking when present, else the wrapped ranker's (then cached)."""
        request = {"text": text, "k": k, "mode": mode}
        version = self._inner.index_version
        cached = await self._cache.get("result", self._cache.key(model, version, request))
        if cached is not None:
            return Ranking(results_json=cached, index_version=version, cached=True)
        ranking = await self._inner.rank(model, text, k, mode)
        # Stored under the version the ranking was computed against (it may be older than the
        # version read above if an update landed meanwhile; then no reader will ask for that key).
        await self._cache.set(self._cache.key(model, ranking.index_version, request), ranking.results_json)
        return ranking


class CachedDocuments:
    """A DocumentSource whose doc_id -> document lookups are cached by index version."""

    def __init__(self, inner: DocumentSource, cache: ResultCache) -> None:
        self._inner = inner
        self._cache = cache

    @property
    def index_version(self) -> int:
        """The live index version of the wrapped source."""
        return self._inner.index_version

    async def document_json(self, doc_id: str) -> bytes | None:
        """The document as JSON bytes, or None when unknown (unknown ids are not cached)."""
        version = self._inner.index_version
        key = self._cache.key("document", version, doc_id)
        cached = await self._cache.get("document", key)
        if cached is not None:
            return cached
        value = await self._inner.document_json(doc_id)
        if value is not None:
            await self._cache.set(key, value)
        return value
