"""Fixtures of the integration tests: a real bundle, and real `lmindexer serve` processes on 127.0.0.1.

The replicas are what docker-compose.yml runs (two `api-N` services sharing one Redis), as local
processes: same command, same settings (LMINDEXER_* variables), loopback only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
# A Redis database of these tests' own (the service tests use 13); flushed before and after.
INTEGRATION_REDIS_URL = os.environ.get("LMINDEXER_INTEGRATION_REDIS_URL", "redis://127.0.0.1:6379/12")
API_KEY = "integration-test-key"  # passed to the replicas like compose passes LMINDEXER_API_KEY
START_TIMEOUT_S = 45.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a process log, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_http_ok(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``url`` until it answers 200; fail with the process log if it dies or the time runs out."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited with {proc.returncode} before {url} answered:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within {timeout_s:.0f} s ({last_error}):\n{log_tail(log)}")


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass(frozen=True)
class Replica:
    """One running `lmindexer serve` process."""

    name: str  # the compose service it stands for (api-1, api-2)
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@pytest.fixture(scope="session")
def integration_bundle() -> Path:
    """A small real bundle (ONNX graphs, tokenizer, trie, documents): the service tests' tiny bundle,
    built once and cached under .cache/ (the replicas only read it)."""
    from tests.service.tiny_bundle import cached_tiny_bundle  # imports torch: only when a test needs it

    return cached_tiny_bundle()


@pytest.fixture(scope="session")
def demo_bundle() -> Path:
    """The trained demo bundle (`lmindexer build-demo --preset integration`: LMIndexer IDs, fine-tuned
    retriever and recommender, ONNX), built once per version of its sources and cached under .cache/
    (minutes the first time; see tests/integration/demo_bundle.py)."""
    from tests.integration.demo_bundle import cached_demo_bundle  # builds with torch: only when a test needs it

    return cached_demo_bundle()


@pytest.fixture(scope="module")
def redis_url_or_none() -> Iterator[str | None]:
    """The shared Redis of the replicas (a flushed database), or None when no Redis answers."""
    client = redis.Redis.from_url(INTEGRATION_REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        yield None
        return
    client.flushdb()
    yield INTEGRATION_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def replicas(integration_bundle: Path, redis_url_or_none: str | None,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    """Two replicas of the service (api-1, api-2) serving the bundle, sharing Redis when there is one."""
    workdir = tmp_path_factory.mktemp("replicas")
    base_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LMINDEXER_")}
    started: list[Replica] = []
    try:
        for name in ("api-1", "api-2"):
            port = free_port()
            # Like a container: its own working directory, where the default store path
            # (var/store-<bundle fingerprint>.sqlite3) lands, as on the replica's volume in compose.
            cwd = workdir / name
            cwd.mkdir()
            env = {
                **base_env,
                "LMINDEXER_REPLICA_ID": name,
                "LMINDEXER_API_KEY": API_KEY,
                "LMINDEXER_INTRA_OP_THREADS": "1",
                "LMINDEXER_LOG_JSON": "false",
            }
            if redis_url_or_none is not None:
                env["LMINDEXER_REDIS_URL"] = redis_url_or_none
            log = workdir / f"{name}.log"
            with log.open("wb") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "lmindexer", "serve", "--bundle", str(integration_bundle),
                     "--host", "127.0.0.1", "--port", str(port)],
                    cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            started.append(Replica(name=name, port=port, proc=proc, log=log))
        for replica in started:  # both start in parallel, then wait for each
            wait_http_ok(f"{replica.url}/readyz", replica.proc, replica.log)
        yield started
    finally:
        for replica in started:
            stop_process(replica.proc)


def bundle_doc_ids(bundle: Path, count: int) -> list[str]:
    """The first ``count`` doc_ids of a bundle's documents.jsonl."""
    doc_ids = []
    with (bundle / "documents.jsonl").open() as f:
        for line in f:
            doc_ids.append(json.loads(line)["doc_id"])
            if len(doc_ids) == count:
                break
    return doc_ids
