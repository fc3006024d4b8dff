"""The prepare pool: work runs off the event loop, the queue is bounded, errors reach their caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.errors import InvalidRequestError, OverloadedError
from gateway.services.workers import WorkerPool

pytestmark = pytest.mark.anyio


async def test_the_event_loop_runs_while_a_job_blocks_and_the_queue_is_bounded(anyio_backend: str) -> None:
    pool = WorkerPool(threads=1, queued=1, name="test")
    release = threading.Event()
    try:
        running = asyncio.ensure_future(pool.run(release.wait, 30))
        waiting = asyncio.ensure_future(pool.run(lambda: "second"))
        ticks = 0
        for _ in range(5):  # the loop keeps turning while the worker is blocked
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 5 and not running.done() and pool.pending == 2
        with pytest.raises(OverloadedError) as info:  # 1 running + 1 queued: the third is refused at once
            await pool.run(lambda: "third")
        assert info.value.status_code == 429 and info.value.headers()["Retry-After"] == "1"
        release.set()
        assert await running is True and await waiting == "second"
        assert pool.pending == 0
    finally:
        release.set()
        pool.close()


async def test_errors_reach_the_caller_and_workers_are_daemons(anyio_backend: str) -> None:
    pool = WorkerPool(threads=2, queued=0, name="test")

    def bad() -> None:
        raise InvalidRequestError("nope", param="x")

    try:
        with pytest.raises(InvalidRequestError, match="nope"):
            await pool.run(bad)
        assert await pool.run(sum, [1, 2]) == 3
        workers = [t for t in threading.enumerate() if t.name.startswith("test-")]
        assert workers and all(t.daemon for t in workers)  # never joined at exit: shutdown cannot hang on them
    finally:
        pool.close()
