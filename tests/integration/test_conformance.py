"""Every response shape the real server produces validates against the official OpenAI OpenAPI document.

Raw HTTP (httpx), not the SDK: the SDK's models fill in missing fields and would hide a violation.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conformance import COMPLETION_STREAM_CHUNK, assert_conforms
from tests.integration.conftest import MODEL, RunningServer

CHAT_RESPONSE = "CreateChatCompletionResponse"
CHAT_CHUNK = "CreateChatCompletionStreamResponse"
COMPLETION_RESPONSE = "CreateCompletionResponse"

ASK = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
HISTORY = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18, "sky": "clear"}'},
]

CHAT_CASES: dict[str, dict[str, Any]] = {
    "plain": {"messages": ASK},
    "n2": {"messages": ASK, "n": 2, "temperature": 1.0, "seed": 7},
    "logprobs": {"messages": ASK, "logprobs": True, "top_logprobs": 3},
    "tools_required": {"messages": HISTORY[1:2], "tools": [WEATHER], "tool_choice": "required", "max_tokens": 48},
    "tools_auto": {"messages": HISTORY[1:2], "tools": [WEATHER], "tool_choice": "auto", "max_tokens": 48},
    "json_schema": {
        "messages": [{"role": "user", "content": "Invent a person."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        "max_tokens": 48,
    },
    "history_with_tool_results": {"messages": HISTORY, "tools": [WEATHER]},
}

COMPLETION_CASES: dict[str, dict[str, Any]] = {
    "plain": {"prompt": "The capital of France is"},
    "list_of_prompts": {"prompt": ["The capital of France is", "One, two,"], "n": 2, "temperature": 1.0},
    "echo_logprobs": {"prompt": "The capital of France is", "echo": True, "logprobs": 2},
    "token_ids": {"prompt": [504, 3575, 282, 4649, 314]},
    "list_of_token_ids": {"prompt": [[504, 3575], [4649, 314]]},
}


def post(server: RunningServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json={"model": MODEL, **body}, timeout=180)


def stream_events(server: RunningServer, path: str, body: dict[str, Any]) -> list[Any]:
    """The parsed `data:` payloads of an SSE response, `[DONE]` last (asserted)."""
    events: list[Any] = []
    payload = {"model": MODEL, **body, "stream": True}
    with httpx.stream("POST", f"{server.base_url}{path}", json=payload, timeout=180) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                data = line[len("data:") :].strip()
                events.append(data if data == "[DONE]" else json.loads(data))
    assert events and events[-1] == "[DONE]", events[-3:]
    assert "[DONE]" not in events[:-1]
    return events[:-1]


def ok_json(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_completion_conforms(server: RunningServer, case: str) -> None:
    body = {"max_tokens": 12, "temperature": 0, **CHAT_CASES[case]}
    payload = ok_json(post(server, "/chat/completions", body))
    assert_conforms(CHAT_RESPONSE, payload)
    assert len(payload["choices"]) == body.get("n", 1)
    if case == "logprobs":
        assert payload["choices"][0]["logprobs"]["content"], "logprobs asked for, none returned: nothing checked"
    if case == "tools_required":
        assert payload["choices"][0]["message"].get("tool_calls"), "required tool_choice returned no tool_calls"


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_stream_chunks_conform(server: RunningServer, case: str) -> None:
    body = {"max_tokens": 12, "temperature": 0, **CHAT_CASES[case], "stream_options": {"include_usage": True}}
    chunks = stream_events(server, "/chat/completions", body)
    for chunk in chunks:
        assert_conforms(CHAT_CHUNK, chunk)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0, "the include_usage chunk comes last"
    finished = {c["choices"][0]["index"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]}
    assert finished == set(range(body.get("n", 1)))
    if case == "tools_required":
        assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)


@pytest.mark.parametrize("case", list(COMPLETION_CASES))
def test_completion_conforms(server: RunningServer, case: str) -> None:
    body = {"max_tokens": 6, "temperature": 0, **COMPLETION_CASES[case]}
    payload = ok_json(post(server, "/completions", body))
    assert_conforms(COMPLETION_RESPONSE, payload)
    if case == "echo_logprobs":
        assert payload["choices"][0]["logprobs"]["token_logprobs"][0] is None  # the legacy looseness is exercised


@pytest.mark.parametrize("case", list(COMPLETION_CASES))
def test_completion_stream_chunks_conform(server: RunningServer, case: str) -> None:
    body = {"max_tokens": 6, "temperature": 0, **COMPLETION_CASES[case], "stream_options": {"include_usage": True}}
    chunks = stream_events(server, "/completions", body)
    for chunk in chunks[:-1]:
        assert_conforms(COMPLETION_STREAM_CHUNK, chunk)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0
    assert_conforms(COMPLETION_RESPONSE, usage)


def test_models_conform(server: RunningServer) -> None:
    listing = ok_json(httpx.get(f"{server.base_url}/models", timeout=30))
    assert_conforms("ListModelsResponse", listing)
    assert listing["data"]
    for card in listing["data"]:
        assert_conforms("Model", ok_json(httpx.get(f"{server.base_url}/models/{card['id']}", timeout=30)))


ERROR_CASES = [
    ("POST", "/chat/completions", {"model": MODEL}, 400),  # messages missing
    ("POST", "/chat/completions", {"model": MODEL, "messages": ASK, "temperature": 9}, 400),
    ("POST", "/chat/completions", {"model": MODEL, "messages": "hi"}, 400),
    ("POST", "/completions", {"model": MODEL, "prompt": "x", "suffix": "y"}, 400),  # unsupported parameter
    ("POST", "/completions", {"model": MODEL, "prompt": [10**9]}, 400),  # token id out of the vocabulary
    ("POST", "/chat/completions", {"model": "no-such-model", "messages": ASK}, 404),
    ("GET", "/models/no-such-model", None, 404),
    ("GET", "/no-such-route", None, 404),
    ("GET", "/chat/completions", None, 405),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), ERROR_CASES)
def test_errors_conform(server: RunningServer, method: str, path: str, body: Any, status: int) -> None:
    response = httpx.request(method, f"{server.base_url}{path}", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_conforms("ErrorResponse", response.json())


def test_invalid_json_body_conforms(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.base_url}/chat/completions",
        content=b'{"model": ',
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    assert_conforms("ErrorResponse", response.json())
