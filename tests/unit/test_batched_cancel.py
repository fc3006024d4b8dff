"""32 concurrent streams, half dropped mid-stream: they stop within a step, slots and threads come back."""

from __future__ import annotations

import asyncio
import threading
import uuid
from contextlib import aclosing

import pytest

from gateway.engine import batched
from gateway.engine.batched import BatchedEngine
from gateway.engine.kvcache import KEEP_IDLE_BYTES
from gateway.engine.types import GenerationRequest
from gateway.errors import OverloadedError
from tests.unit.batched_tiny import PROMPTS, collect, gpt2_tokenizer, params, prompt, tiny_model

pytestmark = pytest.mark.anyio


async def dropped_stream(engine: BatchedEngine, ids: list[int], after: int, cancel_steps: dict[str, int]) -> int:
    """Read `after` token deltas, then leave (as a disconnected client does); returns tokens seen."""
    request_id = uuid.uuid4().hex
    request = GenerationRequest(request_id=request_id, prompt_ids=ids, params=params(5000))
    seen = 0
    async with aclosing(engine.generate(request)) as deltas:
        async for delta in deltas:
            seen += len(delta.token_ids)
            if seen >= after:
                cancel_steps[request_id] = engine.steps
                break
    return seen


async def test_half_of_32_streams_dropped(anyio_backend: str) -> None:
    baseline_threads = threading.active_count()
    engine = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny", max_running=32, max_queued=8)
    try:
        idle = await collect(engine, prompt(PROMPTS[0]), params(4))
        cancel_steps: dict[str, int] = {}
        keep = [collect(engine, prompt(PROMPTS[i % 5]), params(120)) for i in range(16)]
        drop = [dropped_stream(engine, prompt(PROMPTS[i % 5]), 3 + i, cancel_steps) for i in range(16)]
        results = await asyncio.gather(*keep, *drop)
        finished, seen = results[:16], results[16:]
        assert all(r.finish_reason == "length" and len(r.token_ids) == 120 for r in finished)
        assert all(3 <= n < 5000 for n in seen)
        dropped = dict(engine.dropped)
        assert set(cancel_steps) <= set(dropped)
        for request_id, step in cancel_steps.items():
            assert dropped[request_id] - step <= 1, "a dropped row kept generating for more than one step"
        # slots, queue places and buffers are free again; the next request starts as fast as before
        assert engine.stats() == {"running": 0, "waiting": 0, "in_flight": 0}
        assert engine.admission.reserved == 0 and not engine._seqs
        after = await collect(engine, prompt(PROMPTS[0]), params(4))
        assert after.token_ids == idle.token_ids
        assert after.ttft is not None and idle.ttft is not None and after.ttft < 3 * idle.ttft + 0.05
        held = engine.cache.nbytes()
        burst = asyncio.gather(*[collect(engine, prompt(PROMPTS[i % 5]), params(260)) for i in range(32)])
        peak = 0
        while not burst.done():
            peak = max(peak, engine.cache.nbytes())
            await asyncio.sleep(0.01)
        await burst
        assert engine.cache.nbytes() <= max(held, 1) * 4  # bounded: buffers are reused, not leaked
        assert peak > KEEP_IDLE_BYTES >= engine.cache.nbytes()  # the burst's KV memory was given back
    finally:
        await engine.close()
    assert threading.active_count() == baseline_threads


async def test_admission_limits_and_429_before_the_first_delta(anyio_backend: str) -> None:
    engine = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny", max_running=2, max_queued=1)
    try:
        engine.reserve(2)
        with pytest.raises(OverloadedError) as info:
            engine.reserve(2)
        assert info.value.status_code == 429 and info.value.code == "overloaded"
        assert info.value.headers()["Retry-After"] == "1"
        engine.reserve(1)  # exactly full now: 3 places
        long = [asyncio.create_task(collect(engine, prompt(PROMPTS[0]), params(400))) for _ in range(3)]
        while engine.stats()["in_flight"] < 3:
            await asyncio.sleep(0.01)
        gen = engine.generate(GenerationRequest(request_id="x", prompt_ids=prompt("hi"), params=params(2)))
        with pytest.raises(OverloadedError):
            await gen.__anext__()  # refused before any delta
        results = await asyncio.gather(*long)
        assert all(r.finish_reason == "length" for r in results)
        assert (await collect(engine, prompt("hi"), params(2))).finish_reason == "length"
    finally:
        await engine.close()


async def test_unused_reservations_expire(anyio_backend: str) -> None:
    engine = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny", max_running=1, max_queued=0)
    engine.admission.ttl = 0.05
    try:
        engine.reserve(1)
        with pytest.raises(OverloadedError):
            engine.reserve(1)
        await asyncio.sleep(0.1)
        engine.reserve(1)
    finally:
        await engine.close()


@pytest.mark.parametrize("reserved", [True, False])
async def test_an_idle_engine_waits_for_the_rest_of_an_admitted_burst(
    anyio_backend: str, reserved: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests the services admitted (reserved) but that are not in the engine yet join the first
    one's prefill; without a reservation the engine starts after a short quiet gap."""
    monkeypatch.setattr(batched, "COALESCE_MAX_S", 5.0)  # the gap rule alone decides, however slow the machine
    engine = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny", max_running=8, max_queued=8)
    try:
        if reserved:
            engine.reserve(2)
        first = asyncio.ensure_future(collect(engine, prompt(PROMPTS[0]), params(4)))
        await asyncio.sleep(20 * batched.COALESCE_GAP_S)
        second = await collect(engine, prompt(PROMPTS[1]), params(4))
        assert (await first).finish_reason == second.finish_reason == "length"
        assert list(engine.prefill_batches) == ([2] if reserved else [1, 1])
    finally:
        await engine.close()


async def test_the_cache_grows_no_further_than_the_rows_can_use(anyio_backend: str) -> None:
    """Doubling would take rows of a 4-token prompt + 70 tokens to 128 columns; they need 74 (80 aligned)."""
    engine = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny", max_running=8, max_queued=8)
    try:
        ids = prompt(PROMPTS[0])
        burst = asyncio.gather(*[collect(engine, ids, params(70)) for _ in range(4)])
        widest = 0
        while not burst.done():
            widest = max(widest, engine.cache.col_capacity)
            await asyncio.sleep(0.002)
        assert all(r.finish_reason == "length" and len(r.token_ids) == 70 for r in await burst)
        widest = max(widest, engine.cache.col_capacity)  # a small cache stays allocated while idle
        assert len(ids) + 70 <= widest <= len(ids) + 70 + 16
    finally:
        await engine.close()
