"""The Redis cache wrappers: hits, version keys, and a down Redis that slows nothing down."""

from __future__ import annotations

import asyncio
import socket
import time

from service.cache import CachedRanker, ResultCache
from service.engine import Ranking
from service.redis_link import RedisLink
from service.telemetry import Metrics


class CountingRanker:
    """A Ranker that answers from a dict and counts calls (the engine is tested elsewhere)."""

    def __init__(self) -> None:
        self.calls = 0
        self.index_version = 3

    async def rank(self, model: str, text: str, k: int, mode: str = "generative") -> Ranking:
        self.calls += 1
        return Ranking(f'[{{"doc_id": "{text}-{k}"}}]'.encode(), self.index_version)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make(url: str, metrics: Metrics, **kw: float) -> tuple[CachedRanker, CountingRanker, RedisLink]:
    link = RedisLink(url, timeout_s=kw.get("timeout_s", 0.25), retry_interval_s=kw.get("retry", 0.5),
                     metrics=metrics)
    inner = CountingRanker()
    cache = ResultCache(link, namespace="lmindexer:test:fp", ttl_s=60, metrics=metrics)
    return CachedRanker(inner, cache), inner, link


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_second_lookup_is_a_hit(redis_url: str) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        ranker, inner, link = _make(redis_url, metrics)
        first = await ranker.rank("retriever", "serum", 5)
        second = await ranker.rank("retriever", "serum", 5)
        assert (first.cached, second.cached) == (False, True)
        assert first.results_json == second.results_json and inner.calls == 1
        await link.close()

    asyncio.run(scenario())
    assert _value(metrics, "lmindexer_cache_lookups_total", kind="result", result="hit") == 1
    assert _value(metrics, "lmindexer_cache_lookups_total", kind="result", result="miss") == 1


def test_a_new_index_version_never_serves_an_old_entry(redis_url: str) -> None:
    async def scenario() -> None:
        ranker, inner, link = _make(redis_url, Metrics())
        await ranker.rank("retriever", "serum", 5)
        inner.index_version += 1
        fresh = await ranker.rank("retriever", "serum", 5)
        assert fresh.cached is False and inner.calls == 2
        other_k = await ranker.rank("retriever", "serum", 6)
        assert other_k.cached is False
        await link.close()

    asyncio.run(scenario())


def test_redis_down_results_still_arrive_and_errors_are_counted() -> None:
    metrics = Metrics()

    async def scenario() -> float:
        ranker, inner, link = _make(f"redis://127.0.0.1:{_closed_port()}/0", metrics)
        started = time.perf_counter()
        rankings = [await ranker.rank("retriever", f"q{i}", 5) for i in range(20)]
        elapsed = time.perf_counter() - started
        assert all(not r.cached for r in rankings) and inner.calls == 20
        await link.close()
        return elapsed

    elapsed = asyncio.run(scenario())
    assert elapsed < 2.0  # the retry interval keeps an outage from adding a timeout per request
    assert _value(metrics, "lmindexer_cache_lookups_total", kind="result", result="error") == 20
    assert _value(metrics, "lmindexer_redis_errors_total", operation="cache_get") >= 1
    assert _value(metrics, "lmindexer_redis_up") == 0


def test_a_hung_redis_costs_at_most_the_timeout() -> None:
    # A listening socket that never answers: the worst kind of outage (no RST, just silence).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    metrics = Metrics()

    async def scenario() -> float:
        ranker, _, link = _make(f"redis://127.0.0.1:{port}/0", metrics, timeout_s=0.1, retry=5.0)
        started = time.perf_counter()
        for i in range(10):
            await ranker.rank("retriever", f"q{i}", 5)
        elapsed = time.perf_counter() - started
        await link.close()
        return elapsed

    try:
        elapsed = asyncio.run(scenario())
    finally:
        server.close()
    assert elapsed < 1.0
    assert _value(metrics, "lmindexer_cache_lookups_total", kind="result", result="error") == 10
