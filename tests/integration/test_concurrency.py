"""Concurrency and cancellation against the real model: queued requests succeed, dropped ones stop."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from tests.integration.conftest import MODEL, RunningServer, chat

LONG = {"max_tokens": 1500, "temperature": 0.8, "ignore_eos": True}


def timed_request(client: openai.OpenAI) -> float:
    started = time.monotonic()
    response = chat(client, content="Name three fruits.", max_tokens=32, extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 32
    return time.monotonic() - started


def test_four_concurrent_requests(client: openai.OpenAI) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: chat(client, content=f"Say the number {i}.", max_tokens=10), range(4)))
    assert all(r.choices[0].message.content for r in results)


def test_abandoned_stream_does_not_block_next_request(server: RunningServer, client: openai.OpenAI) -> None:
    normal = min(timed_request(client) for _ in range(2))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long essay."}], "stream": True}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json={**body, **LONG}, timeout=60) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]  # a few chunks in: generation is running
        assert any(line.startswith("data: ") for line in received)
    # The client is gone; the 1500-token generation must stop within a step, not delay the next user.
    after = timed_request(client)
    assert after < 2 * normal, f"next request took {after:.2f}s vs {normal:.2f}s normally"


def test_abandoned_non_stream_request_is_cancelled(server: RunningServer, client: openai.OpenAI) -> None:
    normal = min(timed_request(client) for _ in range(2))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long essay."}], **LONG}
    try:
        httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=1.0)
    except httpx.TimeoutException:
        pass  # the client gave up and closed the connection
    after = timed_request(client)
    assert after < 2 * normal, f"next request took {after:.2f}s vs {normal:.2f}s normally"
