"""Errors before the first byte: status + exact OpenAI envelope; x-request-id (compat §2.6, §3, §9 6, 12, 18-20)."""

from __future__ import annotations

import json

import pytest

from gateway.engine.fake import FakeEngine
from tests.unit.helpers import MODEL, USER, assert_envelope, make_settings, open_gateway, sse_payloads

pytestmark = pytest.mark.anyio

LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 20


async def test_malformed_json_is_400(gw):
    r = await gw.client.post(
        "/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"}
    )
    assert_envelope(r, 400, error_type="invalid_request_error")


async def test_empty_messages_is_400_not_422(gw):
    r = await gw.chat(messages=[])
    error = assert_envelope(r, 400, param="messages", error_type="invalid_request_error")
    assert "messages" in error["message"]


async def test_missing_messages_is_400(gw):
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL})
    assert_envelope(r, 400, param="messages")


async def test_temperature_out_of_range_names_param(gw):
    assert_envelope(await gw.chat(temperature=5), 400, param="temperature", error_type="invalid_request_error")


async def test_wrong_type_is_400(gw):
    assert_envelope(await gw.chat(n="many"), 400, param="n")


async def test_unknown_model_is_404(gw):
    error = assert_envelope(await gw.chat(model="gpt-3.5-turbo"), 404, param="model", code="model_not_found")
    assert "gpt-3.5-turbo" in error["message"]
    error = assert_envelope(await gw.completion(model="nope", prompt="x"), 404, code="model_not_found")


async def test_context_length_exceeded_is_400():
    async with open_gateway(context_length=64) as gw:
        error = assert_envelope(await gw.chat(max_tokens=100), 400, code="context_length_exceeded")
        assert "maximum context length is 64 tokens" in error["message"]
        # prompt alone over the window, no max_tokens
        long_messages = [{"role": "user", "content": LONG_TEXT}]
        assert_envelope(await gw.chat(messages=long_messages), 400, code="context_length_exceeded")
        assert_envelope(await gw.completion(prompt=LONG_TEXT), 400, code="context_length_exceeded")
        assert gw.engine.requests == []
        # a request that fits still works
        assert (await gw.chat(max_tokens=4)).status_code == 200


async def test_logit_bias_out_of_range_token_is_400(gw):
    assert_envelope(await gw.chat(logit_bias={"99999999": 1}), 400, param="logit_bias")
    assert_envelope(await gw.chat(logit_bias={"-1": 1}), 400, param="logit_bias")
    assert_envelope(await gw.chat(logit_bias={"abc": 1}), 400, param="logit_bias")
    assert_envelope(await gw.chat(logit_bias={"5": 500}), 400, param="logit_bias")


async def test_stop_token_ids_out_of_range_is_400(gw):
    assert_envelope(await gw.chat(stop_token_ids=[10**9]), 400, param="stop_token_ids")


async def test_top_logprobs_without_logprobs_is_400(gw):
    assert_envelope(await gw.chat(top_logprobs=3), 400, param="top_logprobs")


async def test_too_many_stop_sequences_is_400():
    async with open_gateway(settings=make_settings(max_stop_sequences=2)) as gw:
        assert_envelope(await gw.chat(stop=["a", "b", "c"]), 400, param="stop")
        assert (await gw.chat(stop=["a", "b"])).status_code == 200
        assert_envelope(await gw.completion(prompt="x", stop=["a", "b", "c"]), 400, param="stop")


async def test_empty_stop_string_is_400(gw):
    assert_envelope(await gw.chat(stop=[""]), 400, param="stop")


async def test_image_url_part_is_400(gw):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}},
            ],
        }
    ]
    error = assert_envelope(await gw.chat(messages=messages), 400, error_type="invalid_request_error")
    assert error["param"] == "messages.0.content"


async def test_text_parts_and_other_message_shapes_are_accepted(gw):
    messages = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}], "name": "bob"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    r = await gw.chat(messages=messages)
    assert r.status_code == 200, r.text


async def test_completions_suffix_is_400(gw):
    assert_envelope(await gw.completion(prompt="def f(", suffix="return 1"), 400, param="suffix")


async def test_completions_empty_prompt_and_bad_token_ids_are_400(gw):
    assert_envelope(await gw.completion(prompt=[]), 400, param="prompt")
    assert_envelope(await gw.completion(prompt=[10**9]), 400, param="prompt")


async def test_unknown_route_is_404_envelope(gw):
    r = await gw.client.get("/v1/nope")
    assert_envelope(r, 404)
    r = await gw.client.post("/v2/chat/completions", json={})
    assert_envelope(r, 404)


async def test_wrong_method_is_405_envelope(gw):
    assert_envelope(await gw.client.get("/v1/chat/completions"), 405)


async def test_unknown_and_openai_only_fields_are_accepted(gw):
    r = await gw.chat(
        store=False,
        metadata={"a": "b"},
        service_tier="auto",
        reasoning_effort="low",
        parallel_tool_calls=False,
        user="u1",
        totally_unknown={"nested": [1, 2]},
        stream_options=None,
    )
    assert r.status_code == 200, r.text
    r = await gw.completion(prompt="hi", some_vendor_field=1, seed=None, logprobs=None)
    assert r.status_code == 200, r.text


async def test_server_still_healthy_after_errors(gw):
    await gw.client.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
    await gw.chat(temperature=99)
    await gw.chat(model="missing")
    r = await gw.client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert (await gw.chat()).status_code == 200


async def test_engine_failure_before_first_byte_is_500_without_retry():
    async with open_gateway(FakeEngine(fail_after=0)) as gw:
        r = await gw.chat()
        assert_envelope(r, 500, error_type="server_error")
        assert r.headers.get("x-should-retry") == "false"


class CrashingEngine(FakeEngine):
    """An engine bug (not a GatewayError): the middleware must still answer with the envelope."""

    async def generate(self, request):
        self.requests.append(request)
        raise RuntimeError("boom")
        yield  # pragma: no cover - makes this an async generator


async def test_unexpected_engine_exception_is_500_envelope():
    async with open_gateway(CrashingEngine()) as gw:
        r = await gw.chat()
        assert_envelope(r, 500, error_type="server_error")
        assert r.headers.get("x-request-id")
        assert "boom" not in r.text  # internals are logged, not leaked
        r = await gw.chat(stream=True)
        assert r.status_code == 200
        payloads = sse_payloads(r.text)
        assert payloads[-1] == "[DONE]"
        assert json.loads(payloads[-2])["error"]["type"] == "server_error"
        assert (await gw.client.get("/health")).status_code == 200


async def test_validation_errors_on_stream_requests_are_json_not_sse(gw):
    r = await gw.chat(stream=True, temperature=5)
    assert_envelope(r, 400, param="temperature")
    r = await gw.chat(stream=True, model="missing")
    assert_envelope(r, 404, code="model_not_found")
    r = await gw.completion(prompt="x", stream=True, suffix="y")
    assert_envelope(r, 400, param="suffix")


# ---- x-request-id --------------------------------------------------------------------------------


async def test_request_id_echoed(gw):
    r = await gw.client.post("/v1/chat/completions", json={"messages": USER}, headers={"x-request-id": "req-abc-123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-abc-123"
    r = await gw.client.post(
        "/v1/chat/completions", json={"messages": USER, "stream": True}, headers={"x-request-id": "req-stream"}
    )
    assert r.headers["x-request-id"] == "req-stream"


async def test_request_id_generated_and_unique(gw):
    first = (await gw.chat()).headers.get("x-request-id")
    second = (await gw.client.get("/health")).headers.get("x-request-id")
    assert first and second and first != second


async def test_request_id_on_errors(gw):
    for response in (
        await gw.chat(temperature=5),
        await gw.chat(model="missing"),
        await gw.client.get("/v1/nope"),
        await gw.client.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}),
        await gw.client.post("/v1/chat/completions", content=b"{}", headers={"content-type": "text/plain"}),
    ):
        assert response.status_code in (400, 404, 415)
        assert response.headers.get("x-request-id")
    r = await gw.client.post("/v1/chat/completions", json={"messages": []}, headers={"x-request-id": "bad-1"})
    assert r.status_code == 400 and r.headers["x-request-id"] == "bad-1"
