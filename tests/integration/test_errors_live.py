"""Bad input against the real server: each gets its 4xx with the OpenAI envelope; the server stays up."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, RunningServer, chat


def envelope(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ('{"model": "x", "messages": [', 400, None),
        ({"model": MODEL, "messages": []}, 400, None),
        ({"model": MODEL}, 400, None),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, None),
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6},
            400,
            "context_length_exceeded",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi " * 9000}]}, 400, "context_length_exceeded"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"999999": 5}}, 400, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 40}, 400, None),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            },
            400,
            None,
        ),
    ],
)
def test_bad_chat_requests(server: RunningServer, body, status: int, code: str | None) -> None:
    url = f"{server.base_url}/chat/completions"
    response = (
        httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
        if isinstance(body, str)
        else httpx.post(url, json=body, timeout=60)
    )
    assert response.status_code == status, response.text
    error = envelope(response)
    assert error["code"] == code
    assert response.headers["x-request-id"]
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": MODEL, "prompt": []}, 400),
        ({"model": MODEL, "prompt": [[]]}, 400),
        ({"model": MODEL, "prompt": [10**8]}, 400),
        ({"model": MODEL, "prompt": "hi", "suffix": "x"}, 400),
        ({"model": MODEL, "prompt": "hi", "max_tokens": -1}, 400),
        ({"model": MODEL, "prompt": "hi", "logprobs": 99}, 400),
        ({"model": "nope", "prompt": "hi"}, 404),
    ],
)
def test_bad_completion_requests(server: RunningServer, body, status: int) -> None:
    response = httpx.post(f"{server.base_url}/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    envelope(response)


def test_sdk_maps_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        chat(client, max_tokens=100_000)
    assert too_long.value.code == "context_length_exceeded"
    assert "maximum context length is 8192 tokens" in too_long.value.message
    assert too_long.value.request_id


def test_request_id_echo_and_models(server: RunningServer) -> None:
    response = httpx.get(f"{server.base_url}/models", headers={"x-request-id": "abc-123"}, timeout=10)
    assert response.headers["x-request-id"] == "abc-123"
    data = response.json()
    assert data["object"] == "list"
    card = next(m for m in data["data"] if m["id"] == MODEL)
    assert card["object"] == "model" and isinstance(card["created"], int) and card["owned_by"]
    detail = httpx.get(f"{server.base_url}/models/{MODEL}", timeout=10).json()
    assert detail["id"] == MODEL and detail["details"]["family"] == "smollm2"
    assert detail["max_model_len"] == 8192
    assert detail["details"]["sampling_defaults"] == {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}
    assert httpx.get(f"{server.base_url}/models/org/missing", timeout=10).status_code == 404
    assert httpx.get(f"{server.url}/docs", timeout=10).status_code == 200
    assert httpx.get(f"{server.url}/health/ready", timeout=10).json()["status"] == "ready"
