"""A bounded pool of worker threads for the CPU-heavy part of preparing a request.

Tokenizing, rendering the chat template, checking and compiling a JSON schema can take seconds on a
large input; on the event loop that froze /health and every other request. The services run that work
here: a few threads, a bounded queue, and an immediate 429 + Retry-After beyond it (more waiting would
only delay everyone). Tokenizers and xgrammar release the GIL while they work, so the event loop keeps
answering.

Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one stuck in a long call would
hold up a shutdown. These are daemon threads; a job whose caller has gone still finishes, but its
result is dropped (a grammar compile is bounded by its own time budget, see engine/grammar_compile.py).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.errors import OverloadedError
from gateway.openmp_pool import release_openmp_workers

logger = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = object()


class WorkerPool:
    """`await pool.run(fn, *args)` runs fn in one of `threads` daemon threads; at most `queued` wait."""

    def __init__(self, threads: int, queued: int, *, name: str = "prepare") -> None:
        self.threads = threads
        self.capacity = threads + queued
        self.name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # running + waiting
        self._workers: list[threading.Thread] = []
        self._closed = False

    @property
    def pending(self) -> int:
        return self._pending

    def _start_workers(self) -> None:  # under the lock; threads start with the first job
        while len(self._workers) < self.threads:
            worker = threading.Thread(target=self._work, name=f"{self.name}-{len(self._workers)}", daemon=True)
            worker.start()
            self._workers.append(worker)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise OverloadedError("The server is shutting down.", retry_after=5)
            if self._pending >= self.capacity:
                raise OverloadedError(
                    f"The server is busy preparing {self._pending} request(s) (limit {self.capacity}). Retry shortly.",
                    retry_after=1,
                )
            self._pending += 1
            self._start_workers()
        self._jobs.put((loop, future, fn, args))
        return await future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            loop, future, fn, args = job
            result = error = None
            try:
                if not future.cancelled():  # a caller that left while its job waited: skip the work
                    try:
                        result = fn(*args)
                    except BaseException as exc:  # handed to the awaiting request (mapped to its status there)
                        error = exc
            finally:
                # Freed before the caller hears back, so whoever it wakes sees the slot free already.
                with self._lock:
                    self._pending -= 1
            if not future.cancelled():
                try:
                    loop.call_soon_threadsafe(_settle, future, result, error)
                except RuntimeError:  # that event loop is closed: nobody is waiting any more
                    pass
            # An idle worker must not keep its last job alive: the plan and the lease reference the
            # model, and an unloaded model's memory only goes back once nothing points at it.
            del job, loop, future, fn, args
            result = error = None
            if self._jobs.empty():  # idle now: its OpenMP workers would slow a busy engine (openmp_pool.py)
                release_openmp_workers()

    def close(self) -> None:
        """Stop the threads once the jobs queued now are done (they are daemons: exit never waits)."""
        with self._lock:
            self._closed = True
            for _ in self._workers:
                self._jobs.put(_STOP)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
