"""Index writers: how an acknowledged /index-documents batch reaches the index of every replica.

``LocalWriter`` (no Redis): apply the batch to this replica's index, one batch at a time.

``StreamWriter`` (LMINDEXER_REDIS_URL set): every update goes through one Redis stream.
    1. the replica that received the batch computes the learned codes (indexer model), then XADDs one
       entry holding the whole batch. If XADD fails, nothing was written anywhere: 503, retry later.
    2. every replica (the writer included) runs a consumer that XREADs the stream in order and applies
       each entry with ``LiveIndex.apply``: semantic IDs are decided there, so every replica assigns
       the same IDs in the same order; the entry id is committed in the same SQLite transaction as
       the documents, so a restarted replica resumes after the last entry it applied (exactly once).
    3. the writer answers the client only after its own consumer has applied (and committed) the
       entry: an acknowledged document is durable in this replica's store and in the stream.
When Redis is down, searches go on; writes fail with 503 (never acknowledged and lost). An entry
XADDed but not applied in time (write_timeout_s) answers 503 too; it is still applied later, and
retrying the batch is safe (idempotent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from typing import Any

from service.errors import NotReadyError
from service.index import LiveIndex, NewDocument, UpdateOutcome
from service.redis_link import RedisLink, RedisUnavailable
from service.telemetry import Metrics

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 2.0  # the longest StreamWriter.stop waits for its consumer task to end


def _count_indexed(metrics: Metrics, outcome: UpdateOutcome, source: str) -> None:
    created = sum(1 for d in outcome.documents if d.status in ("created", "reindexed"))
    if created:
        metrics.documents_indexed.labels(source=source).inc(created)


class LocalWriter:
    """Apply updates to this replica only (no Redis configured)."""

    def __init__(self, index: LiveIndex, metrics: Metrics) -> None:
        self._index = index
        self._metrics = metrics
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def status(self) -> dict[str, Any]:
        """Replication state for /readyz and /info."""
        return {"mode": "local", "caught_up": True}

    async def write(self, documents: list[NewDocument]) -> UpdateOutcome:
        """Apply one batch durably, after any batch before it."""
        async with self._lock:
            outcome = await asyncio.to_thread(self._index.apply, documents)
        _count_indexed(self._metrics, outcome, "api")
        return outcome


class StreamWriter:
    """Publish updates to a Redis stream and apply every entry of it, in order (see module doc)."""

    def __init__(self, index: LiveIndex, *, link: RedisLink, read_link: RedisLink, stream_key: str,
                 replica_id: str, metrics: Metrics, block_ms: int, write_timeout_s: float,
                 retry_interval_s: float) -> None:
        self._index = index
        self._link = link
        self._read_link = read_link
        self.stream_key = stream_key
        self._replica_id = replica_id
        self._metrics = metrics
        self._block_ms = block_ms
        self._write_timeout_s = write_timeout_s
        self._retry_interval_s = retry_interval_s
        self._waiters: dict[str, asyncio.Future[UpdateOutcome]] = {}
        # Outcomes of recently applied entries: the consumer may apply an entry before the writer
        # that XADDed it starts waiting (two connections, one event loop).
        self._recent: OrderedDict[str, UpdateOutcome] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()
        self.last_error: str | None = None

    async def start(self) -> None:
        """Start the consumer (it first catches up with entries applied elsewhere while we were away)."""
        self._task = asyncio.get_running_loop().create_task(self._consume_forever(), name="stream-consumer")

    async def stop(self) -> None:
        """Stop the consumer; pending writers get 503."""
        if self._task is not None:
            self._task.cancel()
            # Bounded: a cancelled Redis read can be slow to unwind (the client drops its connection), and
            # shutting down must never hang on it; the task is abandoned after the wait, never resumed.
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
            if not done:
                logger.warning("the stream consumer did not stop within %.1f s; abandoning it", STOP_TIMEOUT_S)
            self._task = None
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(NotReadyError("the service is shutting down"))

    def status(self) -> dict[str, Any]:
        """Replication state for /readyz and /info."""
        return {"mode": "redis-stream", "stream": self.stream_key, "caught_up": self.caught_up.is_set(),
                "last_applied": self._index.last_stream_id, "redis_up": self._link.is_up}

    async def write(self, documents: list[NewDocument]) -> UpdateOutcome:
        """Publish one batch and wait until this replica has applied it."""
        payload = json.dumps({"origin": self._replica_id, "published_at": time.time(),
                              "documents": [d.as_dict() for d in documents]}, ensure_ascii=False)
        try:
            raw_id = await self._link.call(
                "stream_publish", lambda c: c.xadd(self.stream_key, {"update": payload.encode("utf-8")}))
        except RedisUnavailable:
            raise NotReadyError("index updates go through Redis, which is unreachable; nothing was "
                                "written, retry later") from None
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        if entry_id in self._recent:
            return self._recent[entry_id]
        future: asyncio.Future[UpdateOutcome] = asyncio.get_running_loop().create_future()
        self._waiters[entry_id] = future
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._write_timeout_s)
        except TimeoutError:
            raise NotReadyError(
                f"the update was published but not applied within {self._write_timeout_s:g} s (Redis or "
                "the store is slow); it will still be applied, and retrying the batch is safe") from None
        finally:
            self._waiters.pop(entry_id, None)

    def _remember(self, entry_id: str, outcome: UpdateOutcome) -> None:
        self._recent[entry_id] = outcome
        while len(self._recent) > 1000:
            self._recent.popitem(last=False)
        future = self._waiters.get(entry_id)
        if future is not None and not future.done():
            future.set_result(outcome)

    async def _apply_entry(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            update = json.loads(fields[b"update"])
            documents = [NewDocument.from_dict(d) for d in update["documents"]]
            origin = str(update.get("origin", ""))
            published_at = float(update.get("published_at", time.time()))
        except (KeyError, TypeError, ValueError) as exc:
            # A malformed entry (not written by this service) is skipped the same way everywhere.
            logger.error("skipping malformed stream entry %s: %s", entry_id, exc)
            documents, origin, published_at = [], "", time.time()
        outcome = await asyncio.to_thread(self._index.apply, documents, stream_id=entry_id)
        source = "api" if origin == self._replica_id else "replication"
        _count_indexed(self._metrics, outcome, source)
        if source == "replication":
            self._metrics.replication_lag_seconds.set(max(0.0, time.time() - published_at))
        self._metrics.index_documents.set(len(self._index.snapshot))
        self._metrics.index_version.set(self._index.snapshot.version)
        self._remember(entry_id, outcome)

    async def _consume_forever(self) -> None:
        while True:
            last_id = self._index.last_stream_id or "0-0"
            try:
                response = await self._read_link.call(
                    "stream_read",
                    lambda c, last_id=last_id: c.xread({self.stream_key: last_id}, count=100, block=self._block_ms))
            except RedisUnavailable as exc:
                self.last_error = str(exc)
                await asyncio.sleep(self._retry_interval_s)
                continue
            self.last_error = None
            entries = [entry for _, stream_entries in (response or []) for entry in stream_entries]
            if not entries:
                if not self.caught_up.is_set():
                    logger.info("index updates caught up (last applied entry %s)", last_id)
                self.caught_up.set()
                continue
            for raw_id, fields in entries:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                try:
                    await self._apply_entry(entry_id, fields)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The store failed (disk full?): do not skip the entry; try again after a pause.
                    logger.exception("applying stream entry %s failed; retrying", entry_id)
                    await asyncio.sleep(self._retry_interval_s)
                    break
