"""Group concurrent requests into one blocking model call (TEI's queue, reduced to asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.errors import ModelError, OverloadedError, ServiceError
from service.telemetry import Metrics

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    enqueued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[In, Out]):
    """Group concurrent requests into one blocking model call.

    The first request of a batch waits at most ``max_wait_s`` for others; the batch then runs in a
    worker thread (``run_batch(items) -> outputs``, one output per item, in order) so the event loop
    keeps accepting requests. When ``max_queue`` requests already wait, ``submit`` raises
    OverloadedError at once: a fast 429 is kinder than a slow timeout. One batch runs at a time:
    onnxruntime already uses every core for one call, so two concurrent calls would only contend.
    """

    def __init__(self, name: str, run_batch: Callable[[list[In]], Sequence[Out]], *, max_size: int,
                 max_wait_s: float, max_queue: int, metrics: Metrics | None = None) -> None:
        self.name = name
        self._run_batch = run_batch
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue(maxsize=max_queue)
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._serve_forever(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop the loop; requests still queued fail with a 503."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(ModelError("the service is shutting down"))

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize()

    async def submit(self, item: In) -> Out:
        """Queue ``item`` and wait for its output. Raises OverloadedError when the queue is full."""
        pending: _Pending[In, Out] = _Pending(item, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            if self._metrics is not None:
                self._metrics.overloaded.labels(model=self.name).inc()
            raise OverloadedError(
                f"too many queued {self.name} requests; retry after a short backoff") from None
        self._set_depth()
        return await pending.future

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(model=self.name).set(self._queue.qsize())

    async def _next_batch(self) -> list[_Pending[In, Out]]:
        first = await self._queue.get()
        batch = [first]
        deadline = first.enqueued_at + self._max_wait_s
        while len(batch) < self._max_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            # Not asyncio.wait_for: on Python 3.11 a timeout racing with a completed get() can drop
            # the item. A cancelled Queue.get() never removes an item, and a finished one keeps it.
            getter = asyncio.ensure_future(self._queue.get())
            await asyncio.wait({getter}, timeout=remaining)
            if not getter.done():
                getter.cancel()
            try:
                batch.append(await getter)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                break
        self._set_depth()
        return batch

    async def _serve_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            batch = [p for p in batch if not p.future.done()]  # the client left (cancelled)
            if not batch:
                continue
            started = time.perf_counter()
            if self._metrics is not None:
                self._metrics.batch_size.labels(model=self.name).observe(len(batch))
                for p in batch:
                    self._metrics.queue_seconds.labels(model=self.name).observe(started - p.enqueued_at)
            try:
                outputs = await asyncio.to_thread(self._run_batch, [p.item for p in batch])
                if len(outputs) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(outputs)} outputs for {len(batch)} inputs")
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(ModelError("the service is shutting down"))
                raise
            except ServiceError as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            except Exception:  # one failure fails the batch, never the loop
                logger.exception("%s batch of %d failed", self.name, len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(ModelError(f"the {self.name} model call failed"))
                continue
            finally:
                if self._metrics is not None:
                    self._metrics.inference_seconds.labels(model=self.name).observe(
                        time.perf_counter() - started)
            for p, out in zip(batch, outputs, strict=True):
                if not p.future.done():
                    p.future.set_result(out)
