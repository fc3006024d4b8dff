"""The batched engine's scrape-time numbers (running, waiting, batch size, KV bytes) and its queue-wait timing."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing

import pytest

from gateway.engine.batched import BatchedEngine
from gateway.engine.types import GenerationRequest
from tests.unit.batched_tiny import PROMPTS, gpt2_tokenizer, params, prompt, tiny_model
from tests.unit.helpers import wait_until

pytestmark = pytest.mark.anyio


async def drain(engine: BatchedEngine, request: GenerationRequest) -> int:
    tokens = 0
    async with aclosing(engine.generate(request)) as deltas:
        async for delta in deltas:
            tokens += len(delta.token_ids)
    return tokens


async def test_snapshot_while_one_sequence_runs_and_one_waits(anyio_backend: str) -> None:
    engine = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny", max_running=1, max_queued=1)
    try:
        first = GenerationRequest(uuid.uuid4().hex, prompt(PROMPTS[1]), params(900))
        second = GenerationRequest(uuid.uuid4().hex, prompt(PROMPTS[0]), params(4))
        async with aclosing(engine.generate(first)) as running:
            await running.__anext__()  # decoding now, for hundreds of steps
            waiting = asyncio.create_task(drain(engine, second))
            assert await wait_until(lambda: engine.admission.in_flight == 2, timeout=10)
            snapshot = engine.metrics_snapshot()
            assert (snapshot["running"], snapshot["waiting"]) == (1, 1)
            assert snapshot["batch_size"] == 1
            assert snapshot["kv_cache_bytes"] > 0
        assert await waiting == 4  # the first one left: the second was scheduled and finished
        assert first.timing.queue_seconds is not None and first.timing.queue_seconds >= 0
        assert second.timing.queue_seconds is not None and second.timing.queue_seconds >= 0
        assert await wait_until(lambda: engine.metrics_snapshot()["batch_size"] == 0, timeout=10)
        idle = engine.metrics_snapshot()
        assert (idle["running"], idle["waiting"]) == (0, 0)
    finally:
        await engine.close()
