"""MicroBatcher: overload, batch size, max wait, cancellation, errors."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batching import MicroBatcher
from service.errors import ModelError, OverloadedError
from service.telemetry import Metrics


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_submit_raises_overloaded_when_queue_is_full() -> None:
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    async def scenario() -> None:
        metrics = Metrics()
        batcher: MicroBatcher[int, int] = MicroBatcher("retriever", slow, max_size=1, max_wait_s=0,
                                                       max_queue=2, metrics=metrics)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the first item is now running, the queue is empty
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError):
            await batcher.submit(3)
        assert metrics.overloaded.labels(model="retriever")._value.get() == 1
        release.set()
        assert await first == 0
        assert [await q for q in queued] == [1, 2]
        await batcher.stop()

    _run(scenario())


def test_batches_never_exceed_max_size_and_outputs_keep_order() -> None:
    sizes: list[int] = []

    def record(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.01)
        return [i * 10 for i in items]

    async def scenario() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher("m", record, max_size=4, max_wait_s=0.05, max_queue=100)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        assert results == [i * 10 for i in range(10)]
        await batcher.stop()

    _run(scenario())
    assert max(sizes) <= 4 and sum(sizes) == 10
    assert sizes[0] == 4  # concurrent requests were grouped


def test_lone_request_is_released_after_max_wait() -> None:
    async def scenario() -> float:
        batcher: MicroBatcher[int, int] = MicroBatcher("m", lambda items: items, max_size=8, max_wait_s=0.05,
                                                       max_queue=10)
        batcher.start()
        started = time.perf_counter()
        assert await batcher.submit(1) == 1
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed

    elapsed = _run(scenario())
    assert 0.04 <= elapsed < 1.0


def test_cancelled_requests_are_skipped() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        seen.append(list(items))
        gate.wait(5)
        return items

    async def scenario() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher("m", run, max_size=1, max_wait_s=0, max_queue=10)
        batcher.start()
        busy = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        assert await busy == 0 and await kept == 2
        await batcher.stop()

    _run(scenario())
    assert [1] not in seen


def test_an_exception_in_the_model_reaches_every_caller_of_the_batch() -> None:
    def boom(items: list[int]) -> list[int]:
        raise RuntimeError("kaput")

    async def scenario() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher("m", boom, max_size=8, max_wait_s=0.02, max_queue=10)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, ModelError) for r in results)
        assert all("kaput" not in str(r) for r in results)  # internals stay in the log
        await batcher.stop()

    _run(scenario())


def test_queue_wait_and_batch_size_are_measured() -> None:
    metrics = Metrics()

    async def scenario() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher("retriever", lambda items: items, max_size=8,
                                                       max_wait_s=0.01, max_queue=10, metrics=metrics)
        batcher.start()
        await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        await batcher.stop()

    _run(scenario())
    text = metrics.render().decode()
    assert 'lmindexer_batch_size_sum{model="retriever"} 3.0' in text
    assert 'lmindexer_queue_wait_seconds_count{model="retriever"} 3.0' in text
    assert 'lmindexer_inference_duration_seconds_count{model="retriever"} 1.0' in text
