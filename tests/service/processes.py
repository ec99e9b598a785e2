"""Real processes for integration tests and the benchmark: the service (uvicorn) and a private Redis.

``ServiceProcess`` runs ``python -m service`` (the same code path as ``lmindexer serve``) in a
subprocess on a free loopback port, waits for /readyz, and can be stopped, killed (-9) and
restarted on the same store. ``RedisServer`` runs the tests' own redis-server on another port (AOF
on, fsync always), so tests can kill and restart it without touching the machine's Redis.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """The service in a subprocess, on ``self.url``."""

    def __init__(self, bundle_dir: Path, store_path: Path, *, redis_url: str | None = None,
                 env: dict[str, str] | None = None, port: int | None = None, log_path: Path | None = None,
                 replica_id: str | None = None) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()  # the process runs in the store's directory
        self.store_path = Path(store_path).resolve()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or self.store_path.with_suffix(f".{self.port}.log")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LMINDEXER_")}
        self.env.update({"LMINDEXER_STORE_PATH": str(self.store_path), "LMINDEXER_LOG_LEVEL": "INFO",
                         "PYTHONPATH": str(REPO_ROOT), "LMINDEXER_INTRA_OP_THREADS": "1"})
        if redis_url:
            self.env["LMINDEXER_REDIS_URL"] = redis_url
        if replica_id:
            self.env["LMINDEXER_REPLICA_ID"] = replica_id
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> ServiceProcess:
        """Start and wait until /readyz answers 200."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--bundle", str(self.bundle_dir), "--port", str(self.port)],
            env=self.env, cwd=str(self.store_path.parent), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"service not ready within {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the service's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9: no shutdown handlers run."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """A graceful stop (SIGTERM), killed after 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer:
    """A private redis-server on a free port, with AOF (fsync always) in its own directory."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        """Whether redis-server is installed."""
        return shutil.which("redis-server") is not None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start (or restart on the same data) and wait for PING."""
        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return self
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """kill -9 the server (AOF with fsync always keeps every acknowledged write)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """Stop the server."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
