"""Two service processes sharing one Redis (issue 7): consistency, catch-up, and a Redis fault."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.processes import RedisServer, ServiceProcess
from tests.service.tiny_bundle import service_test_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not RedisServer.available():
        pytest.skip("redis-server not installed (Debian's package `redis-server`; .ci/prepare installs it)")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _wait_for_document(url: str, doc_id: str, timeout_s: float) -> tuple[float, dict | None]:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        response = httpx.get(f"{url}/documents/{doc_id}", timeout=2)
        if response.status_code == 200:
            return time.perf_counter() - started, response.json()
        time.sleep(0.01)
    return time.perf_counter() - started, None


def test_a_document_indexed_on_one_replica_is_found_on_the_other_within_1s(
        tmp_path: Path, private_redis: RedisServer) -> None:
    bundle_dir = service_test_bundle()
    a = ServiceProcess(bundle_dir, tmp_path / "a.sqlite3", redis_url=private_redis.url, replica_id="a").start()
    b = ServiceProcess(bundle_dir, tmp_path / "b.sqlite3", redis_url=private_redis.url, replica_id="b").start()
    try:
        for i in range(5):
            doc = {"doc_id": f"X{i}", "text": f"replicated document {i} with rose water toner"}
            indexed = httpx.post(f"{a.url}/index-documents", json={"documents": [doc]}, timeout=10)
            assert indexed.status_code == 200, indexed.text
            elapsed, found = _wait_for_document(b.url, f"X{i}", 1.0)
            assert found is not None, f"X{i} not on replica b after {elapsed:.2f} s"
            assert found["semantic_id"] == indexed.json()["documents"][0]["semantic_id"]
        # Both replicas now serve the same index version, so their cached answers are interchangeable.
        assert httpx.get(f"{a.url}/info").json()["index_version"] == httpx.get(f"{b.url}/info").json()["index_version"]

        # Concurrent writes through both replicas, all under colliding learned prefixes: the stream
        # orders them, so both replicas assign the same IDs.
        def write(url: str, prefix: str) -> None:
            for i in range(6):
                docs = [{"doc_id": f"{prefix}{i}-{j}", "text": f"same words {j}"} for j in range(3)]
                assert httpx.post(f"{url}/index-documents", json={"documents": docs}, timeout=10).status_code == 200

        threads = [threading.Thread(target=write, args=(a.url, "PA")),
                   threading.Thread(target=write, args=(b.url, "PB"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        time.sleep(1.0)
        doc_ids = [f"{p}{i}-{j}" for p in ("PA", "PB") for i in range(6) for j in range(3)]
        on_a = {d: httpx.get(f"{a.url}/documents/{d}").json()["semantic_id"] for d in doc_ids}
        on_b = {d: httpx.get(f"{b.url}/documents/{d}").json()["semantic_id"] for d in doc_ids}
        assert on_a == on_b
        assert len({tuple(v) for v in on_a.values()}) == len(doc_ids)  # unique IDs

        # Replica b is killed, misses updates, and catches up on restart.
        b.kill()
        missed = [{"doc_id": f"M{i}", "text": f"written while b was down {i}"} for i in range(4)]
        assert httpx.post(f"{a.url}/index-documents", json={"documents": missed}, timeout=10).status_code == 200
        b = ServiceProcess(bundle_dir, tmp_path / "b.sqlite3", redis_url=private_redis.url, replica_id="b",
                           port=b.port).start()
        for i in range(4):
            _, found = _wait_for_document(b.url, f"M{i}", 5.0)
            on_a = httpx.get(f"{a.url}/documents/M{i}").json()["semantic_id"]
            assert found is not None and found["semantic_id"] == on_a
    finally:
        a.stop()
        b.stop()


def test_redis_killed_and_restarted_under_load(tmp_path: Path, private_redis: RedisServer) -> None:
    bundle_dir = service_test_bundle()
    a = ServiceProcess(bundle_dir, tmp_path / "a.sqlite3", redis_url=private_redis.url, replica_id="a").start()
    b = ServiceProcess(bundle_dir, tmp_path / "b.sqlite3", redis_url=private_redis.url, replica_id="b").start()
    stop = threading.Event()
    failures: list[tuple[float, str]] = []
    searches = [0]
    acknowledged: dict[str, list[int]] = {}

    def search_load(url: str) -> None:
        client = httpx.Client(base_url=url, timeout=5)
        i = 0
        while not stop.is_set():
            try:
                response = client.post("/search", json={"query": f"load {i % 7}", "k": 5})
                if response.status_code != 200:
                    failures.append((time.monotonic(), f"{response.status_code} {response.text[:100]}"))
            except httpx.HTTPError as exc:
                failures.append((time.monotonic(), repr(exc)))
            searches[0] += 1
            i += 1

    def index_load(url: str) -> None:
        client = httpx.Client(base_url=url, timeout=15)
        n = 0
        while not stop.is_set():
            doc = {"doc_id": f"F{n}", "text": f"fault test document {n}"}
            try:
                response = client.post("/index-documents", json={"documents": [doc]})
                if response.status_code == 200:
                    acknowledged[doc["doc_id"]] = response.json()["documents"][0]["semantic_id"]
                else:
                    assert response.status_code == 503, response.text  # refused, never half-done
                    time.sleep(0.05)
            except httpx.HTTPError:
                pass
            n += 1

    threads = [threading.Thread(target=search_load, args=(a.url,)), threading.Thread(target=search_load, args=(b.url,)),
               threading.Thread(target=index_load, args=(a.url,))]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        private_redis.kill()
        time.sleep(2.0)
        private_redis.start()
        time.sleep(2.5)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    try:
        assert searches[0] > 50
        assert failures == [], failures[:5]  # searches never depend on Redis
        assert len(acknowledged) > 5
        for doc_id, semantic_id in acknowledged.items():
            for service in (a, b):
                _, found = _wait_for_document(service.url, doc_id, 5.0)
                assert found is not None and found["semantic_id"] == semantic_id, (service.url, doc_id)
    finally:
        a.stop()
        b.stop()
