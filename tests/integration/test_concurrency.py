"""Concurrency and cancellation against the real model: queued requests succeed, dropped ones stop."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from tests.integration.conftest import MODEL, RunningServer, chat

LONG = {"max_tokens": 1500, "temperature": 0.8, "ignore_eos": True}


def aborted_sequences(server: RunningServer) -> list[int]:
    """Token counts of the sequences the server logged as aborted (services/sequences.py)."""
    return [int(m) for m in re.findall(r"sequence \w+: abort after (\d+) tokens", server.log.read_text())]


def wait_for_abort(server: RunningServer, before: int) -> int:
    """The token count of the next aborted sequence; fails if none is logged within 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = aborted_sequences(server)
        if len(counts) > before:
            return counts[before]
        time.sleep(0.1)
    raise AssertionError(f"no aborted sequence in the server log:\n{server.log.read_text()[-2000:]}")


def next_request_is_served(client: openai.OpenAI) -> None:
    response = chat(client, content="Name three fruits.", max_tokens=32, extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 32


def test_four_concurrent_requests(client: openai.OpenAI) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: chat(client, content=f"Say the number {i}.", max_tokens=10), range(4)))
    assert all(r.choices[0].message.content for r in results)


def test_abandoned_stream_does_not_block_next_request(server: RunningServer, client: openai.OpenAI) -> None:
    before = len(aborted_sequences(server))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long essay."}], "stream": True}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json={**body, **LONG}, timeout=60) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]  # a few chunks in: generation is running
        assert any(line.startswith("data: ") for line in received)
    # The client is gone; the 1500-token generation stops within a step or two instead of running on.
    assert wait_for_abort(server, before) < 200
    next_request_is_served(client)


def test_abandoned_non_stream_request_is_cancelled(server: RunningServer, client: openai.OpenAI) -> None:
    before = len(aborted_sequences(server))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long essay."}], **LONG}
    try:
        httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=1.0)
    except httpx.TimeoutException:
        pass  # the client gave up and closed the connection
    assert wait_for_abort(server, before) < 400  # ~1 s of decoding, not the 1500 asked for
    next_request_is_served(client)
