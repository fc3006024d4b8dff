"""Admission control over HTTP: a saturated model answers 429 + Retry-After before any stream starts."""

from __future__ import annotations

import asyncio

import pytest

from gateway.engine.admission import Admission, AdmittedEngine
from gateway.engine.fake import FakeEngine
from tests.unit.helpers import assert_envelope, open_gateway, sse_events

pytestmark = pytest.mark.anyio


def saturable(max_running: int = 1, max_queued: int = 1) -> AdmittedEngine:
    slow = FakeEngine(pieces=["tick"] * 40, delay=0.02)
    return AdmittedEngine(slow, Admission(max_running=max_running, max_queued=max_queued, name="fake-model"))


async def test_full_model_answers_429_with_envelope_and_retry_after(anyio_backend: str) -> None:
    engine = saturable()
    async with open_gateway(engine) as gw:  # type: ignore[arg-type]
        busy = [asyncio.create_task(gw.chat(max_tokens=100)) for _ in range(2)]
        while engine.admission.in_flight < 2:
            await asyncio.sleep(0.005)
        for stream in (True, False):
            refused = await gw.chat(stream=stream)
            error = assert_envelope(refused, 429, code="overloaded", error_type="rate_limit_error")
            assert "overloaded" in error["message"]
            assert refused.headers["retry-after"] == "1"
        refused = await gw.completion(prompt="hi", stream=True)
        assert_envelope(refused, 429, code="overloaded")
        done = await asyncio.gather(*busy)
        assert all(r.status_code == 200 for r in done)
        ok = await gw.chat(stream=True)
        assert ok.status_code == 200 and sse_events(ok.text)
        assert engine.admission.in_flight == 0 and engine.admission.reserved == 0


async def test_n_beyond_capacity_is_400_not_429(anyio_backend: str) -> None:
    """More sequences than running + queued can ever hold: a retry cannot succeed, so 400, no Retry-After."""
    engine = saturable(max_running=1, max_queued=1)
    async with open_gateway(engine) as gw:  # type: ignore[arg-type]
        for response in (await gw.chat(n=3), await gw.chat(n=3, stream=True)):
            error = assert_envelope(response, 400, param="n", code="limit_exceeded")
            assert "exceeds the limit of 2" in error["message"]
            assert "retry-after" not in response.headers
        assert (await gw.chat(n=2)).status_code == 200
        assert_envelope(await gw.completion(prompt=["a", "b"], n=2), 400, param="n", code="limit_exceeded")
        assert_envelope(await gw.completion(prompt=["a", "b", "c"]), 400, param="prompt", code="limit_exceeded")
        assert (await gw.completion(prompt=["a", "b"])).status_code == 200
        assert engine.inner.requests and len(engine.inner.requests) == 4  # 2 + 2 sequences, none of the refused
        assert engine.admission.in_flight == 0 and engine.admission.reserved == 0
