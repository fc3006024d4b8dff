"""Every request's RequestRecord reaches the observers once, with the model, real token counts, TTFT and status."""

from __future__ import annotations

import pytest

from gateway.accounting import RequestRecord
from gateway.engine.fake import FakeEngine
from tests.unit.helpers import MODEL, open_gateway, sse_events

pytestmark = pytest.mark.anyio


async def _records(**chat_fields) -> tuple[list[RequestRecord], dict | list]:
    seen: list[RequestRecord] = []
    async with open_gateway(FakeEngine()) as gw:
        gw.app.state.request_observers.append(seen.append)
        response = await gw.chat(**chat_fields)
        body = sse_events(response.text) if chat_fields.get("stream") else response.json()
    return seen, body


async def test_a_chat_request_is_recorded_with_its_usage():
    seen, body = await _records(max_tokens=5)
    assert len(seen) == 1
    record = seen[0]
    assert (record.status, record.model, record.model_kind, record.aborted) == (200, MODEL, "local", False)
    assert record.prompt_tokens == body["usage"]["prompt_tokens"] > 0
    assert record.completion_tokens == body["usage"]["completion_tokens"] > 0
    assert record.ttft_seconds is not None and record.duration_seconds >= record.ttft_seconds


async def test_a_stream_counts_its_tokens_before_the_record_finishes():
    seen, events = await _records(max_tokens=5, stream=True, stream_options={"include_usage": True})
    usage = events[-1]["usage"]
    assert len(seen) == 1
    assert (seen[0].prompt_tokens, seen[0].completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])


async def test_an_error_is_recorded_with_its_status_and_no_tokens():
    seen, _ = await _records(model="no-such-model")
    assert [(r.status, r.prompt_tokens, r.completion_tokens, r.model) for r in seen] == [(404, 0, 0, None)]
