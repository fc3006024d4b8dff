"""Threads that run torch now and then hand their OpenMP workers back (gateway/openmp_pool.py).

libgomp keeps a pool of worker threads per thread that ran a parallel region; once pools outnumber the
cores, every parallel region of a busy engine pays a futex wake-up (a decode step ~60 % slower after one
embeddings request). Counted here as OS threads of this process (/proc/self/task): a thread's workers
exist after its parallel work and are gone once it released them.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from gateway import openmp_pool
from gateway.engine import batched
from gateway.engine.batched import BatchedEngine
from gateway.openmp_pool import release_openmp_workers, released
from gateway.services import workers
from gateway.services.workers import WorkerPool
from tests.unit.batched_tiny import collect, gpt2_tokenizer, params, tiny_model

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(torch.get_num_threads() < 2, reason="one torch thread: no OpenMP workers to hand back"),
    pytest.mark.skipif(not openmp_pool._libgomp_runtimes(), reason="torch does not run on GNU libgomp here"),
]


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def parallel_work() -> None:
    """An op torch splits across its threads (grain 32k elements): the calling thread's pool starts."""
    torch.ones(1 << 22).mul(2).sum()


def wait_until(done, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Threads hand over work asynchronously: poll `done()` until it holds or the deadline passes."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def counting_release(freed: list[int]):  # type: ignore[no-untyped-def]
    """release_openmp_workers, noting how many OS threads each call ended (pthread_join: at once, so other
    threads of the test process coming and going do not blur it)."""

    def release() -> bool:
        before = os_threads()
        done = release_openmp_workers()
        freed.append(before - os_threads())
        return done

    return release


WORKERS = torch.get_num_threads() - 1  # a thread's pool: the workers beside the thread itself


def test_a_thread_hands_its_workers_back(anyio_backend: str) -> None:
    freed: list[int] = []

    def work() -> None:
        counting_release(freed)()  # nothing to hand back yet
        parallel_work()
        counting_release(freed)()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert freed == [0, WORKERS]


async def test_request_preparation_workers_release_when_idle(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    freed: list[int] = []
    monkeypatch.setattr(workers, "release_openmp_workers", counting_release(freed))
    pool = WorkerPool(1, 4, name="test-prepare")
    try:
        await pool.run(parallel_work)
        wait_until(lambda: freed)
        assert freed == [WORKERS]  # the worker thread stays, its OpenMP workers go
    finally:
        pool.close()


def test_pipeline_jobs_release_their_executor_threads_workers(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    freed: list[int] = []
    monkeypatch.setattr(openmp_pool, "release_openmp_workers", counting_release(freed))
    with ThreadPoolExecutor(1) as executor:  # as PipelineHandle runs `released(work)`
        executor.submit(released(parallel_work)).result()
        assert freed == [WORKERS]


async def test_an_engine_going_idle_hands_its_workers_back(monkeypatch: pytest.MonkeyPatch, anyio_backend: str) -> None:
    freed: list[int] = []
    monkeypatch.setattr(batched, "release_openmp_workers", counting_release(freed))
    engine = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny-omp")
    try:
        wait_until(lambda: len(freed) == 1)  # idle at start: nothing to hand back
        await collect(engine, list(range(10, 1000)), params(max_new_tokens=3))  # 990 x 64 activations: parallel
        wait_until(lambda: len(freed) == 2)  # idle again once the request is done
        assert freed == [0, WORKERS]
    finally:
        await engine.close()
