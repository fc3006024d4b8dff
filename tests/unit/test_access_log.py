"""One access line per request with its fields; prompts and outputs only with log_prompts; JSON lines."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from gateway.access_log import JsonFormatter
from gateway.engine.fake import FakeEngine
from tests.unit.helpers import MODEL, make_settings, open_gateway

pytestmark = pytest.mark.anyio

SECRET = "zebra-quartz-7731 my private question"


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.access"]


async def test_one_access_line_per_request_and_no_prompt_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_gateway(FakeEngine()) as gw:
        chat = await gw.chat(messages=[{"role": "user", "content": SECRET}], max_tokens=5)
        done = await gw.completion(prompt=SECRET, max_tokens=2, stream=True)
        await gw.client.get("/health", headers={"x-request-id": "probe-1"})
    assert chat.status_code == done.status_code == 200
    lines = access_records(caplog)
    assert [(r.method, r.route, r.status) for r in lines] == [
        ("POST", "/v1/chat/completions", 200),
        ("POST", "/v1/completions", 200),
        ("GET", "/health", 200),
    ]
    first = lines[0]
    usage = chat.json()["usage"]
    assert (first.model, first.prompt_tokens, first.completion_tokens) == (MODEL, usage["prompt_tokens"], 3)
    assert first.request_id == chat.headers["x-request-id"]
    assert first.ttft_seconds is not None and first.duration_seconds >= first.ttft_seconds
    assert first.key_name is None and first.aborted is False
    assert "status=200" not in first.getMessage() and " 200 " in first.getMessage()
    assert lines[2].request_id == "probe-1" and lines[2].model is None
    assert "zebra-quartz" not in caplog.text  # prompts never reach the log, debug included
    assert not [r for r in caplog.records if r.name == "gateway.prompts"]


async def test_log_prompts_logs_the_prompt_and_the_output(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with open_gateway(FakeEngine(), settings=make_settings(log_prompts=True)) as gw:
        chat = await gw.chat(messages=[{"role": "user", "content": SECRET}], max_tokens=5)
        completion = await gw.completion(prompt=SECRET, max_tokens=2, stream=True)
    prompts = [r for r in caplog.records if r.name == "gateway.prompts"]
    assert [r.request_id for r in prompts] == [chat.headers["x-request-id"], completion.headers["x-request-id"]]
    assert SECRET in prompts[0].prompt and prompts[0].outputs == ["Hello world!"]
    assert prompts[1].prompt == SECRET and prompts[1].outputs == ["Hello world"]
    assert SECRET in prompts[0].getMessage() and "Hello world!" in prompts[0].getMessage()


async def test_client_text_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with open_gateway(FakeEngine()) as gw:
        await gw.client.get("/v1/x%0A2026-01-01 INFO forged", headers={"x-request-id": b"a\x1b[2Jb"})
    (line,) = access_records(caplog)
    assert "\n" not in line.getMessage() and "\x1b" not in line.getMessage()
    assert line.route is None and line.status == 404


def test_json_formatter_writes_one_object_per_line_with_the_extra_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "GET %s\nnext", ("/x",), exc_info)
    record.__dict__.update({"request_id": "r1", "status": 200, "ttft_seconds": None, "model": "m\u2028"})
    line = JsonFormatter().format(record)
    assert "\n" not in line and "\u2028" not in line
    data = json.loads(line)
    assert data["message"] == "GET /x\nnext" and data["logger"] == "gateway.access" and data["level"] == "INFO"
    assert (data["request_id"], data["status"], data["ttft_seconds"], data["model"]) == ("r1", 200, None, "m\u2028")
    assert "ValueError: boom" in data["exc_info"] and data["time"].endswith("Z")
    assert "msg" not in data and "args" not in data
