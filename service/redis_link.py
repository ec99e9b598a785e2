"""One guarded connection to Redis: short timeouts, error counting, and a retry interval after failures.

A down Redis must slow the service, never break it: every call either returns within
``timeout_s`` or raises ``RedisUnavailable``, and after a failure Redis is skipped for
``retry_interval_s`` (so an outage does not add a timeout to every request). redis-py reconnects
by itself on the next call once the server is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from service.telemetry import Metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis could not be reached (or is being skipped after a recent failure)."""


class RedisLink:
    """A redis.asyncio client with a circuit breaker; ``call`` is the only way to use it."""

    def __init__(self, url: str, *, timeout_s: float, retry_interval_s: float, metrics: Metrics,
                 extra_read_timeout_s: float = 0.0) -> None:
        self.url = url
        self._retry_interval_s = retry_interval_s
        self._metrics = metrics
        # extra_read_timeout_s: the stream consumer's blocking XREAD must not time out by itself.
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s + extra_read_timeout_s, socket_connect_timeout=timeout_s,
            retry_on_timeout=False, health_check_interval=0, max_connections=64)
        self._down_until = 0.0
        self._is_down = False

    @property
    def is_up(self) -> bool:
        """False while skipping Redis after a failure."""
        return not self._is_down

    async def call(self, operation: str, fn: Callable[[redis.Redis], Awaitable[T]]) -> T:
        """Run ``fn(client)``; on any Redis or socket error count it and raise RedisUnavailable."""
        now = time.monotonic()
        if self._is_down and now < self._down_until:
            raise RedisUnavailable("Redis was unreachable moments ago")
        try:
            result = await fn(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.redis_errors.labels(operation=operation).inc()
            self._metrics.redis_up.set(0)
            self._down_until = time.monotonic() + self._retry_interval_s
            if not self._is_down:
                logger.warning("Redis unreachable (%s: %s); continuing without it, retrying every %.1f s",
                               operation, type(exc).__name__, self._retry_interval_s)
            self._is_down = True
            raise RedisUnavailable(str(exc)) from exc
        if self._is_down:
            logger.info("Redis is reachable again")
        self._is_down = False
        self._metrics.redis_up.set(1)
        return result

    async def ping(self) -> bool:
        """True when Redis answers a PING now (ignores the retry interval)."""
        self._down_until = 0.0
        try:
            return bool(await self.call("ping", lambda c: c.ping()))
        except RedisUnavailable:
            return False

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()
