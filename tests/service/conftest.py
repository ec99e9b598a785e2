"""Fixtures of the service tests: a tiny real bundle, a clean Redis database, an app client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.service.tiny_bundle import service_test_bundle

# The machine's Redis; tests use their own database number and flush it before and after.
TEST_REDIS_URL = os.environ.get("LMINDEXER_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    """The bundle the service tests serve (switch to the demo bundle here: one line)."""
    return service_test_bundle()


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {TEST_REDIS_URL} (.ci/prepare starts one on 127.0.0.1:6379)")
    return client


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A flushed Redis database for one test."""
    client = _redis_or_skip()
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()
