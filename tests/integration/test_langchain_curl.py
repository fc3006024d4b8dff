"""LangChain ChatOpenAI / OpenAI and curl -N against the real server."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from langchain_openai import ChatOpenAI, OpenAI

from tests.integration.conftest import MODEL, RunningServer


@pytest.fixture
def llm(server: RunningServer) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=server.base_url, api_key="x", temperature=0, max_tokens=12, max_retries=0)


def test_langchain_invoke_stream_batch(llm: ChatOpenAI) -> None:
    message = llm.invoke("What is the capital of France?")
    assert "Paris" in message.content
    assert message.usage_metadata["output_tokens"] > 0
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    streamed = "".join(chunk.content for chunk in llm.stream("What is the capital of France?"))
    assert streamed == message.content
    answers = llm.batch(["Hi", "What is 2+2?", "Name a color."])
    assert len(answers) == 3 and all(a.content for a in answers)


def test_langchain_stream_usage(server: RunningServer) -> None:
    llm = ChatOpenAI(model=MODEL, base_url=server.base_url, api_key="x", temperature=0, max_tokens=6, stream_usage=True)
    total = None
    for chunk in llm.stream("Tell me a story."):
        total = chunk if total is None else total + chunk
    assert total.usage_metadata["output_tokens"] == 6
    assert total.usage_metadata["total_tokens"] == total.usage_metadata["input_tokens"] + 6
    assert total.response_metadata["finish_reason"] == "length"


def test_langchain_completions_llm(server: RunningServer) -> None:
    llm = OpenAI(model=MODEL, base_url=server.base_url, api_key="x", temperature=0, max_tokens=5, max_retries=0)
    result = llm.generate(["The capital of France is", "1, 2, 3,"])
    assert len(result.generations) == 2 and all(g[0].text for g in result.generations)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_stream_exactly_as_the_readme(server: RunningServer) -> None:
    body = f'{{"model":"{MODEL}","messages":[{{"role":"user","content":"Hi"}}],"stream":true}}'
    out = subprocess.run(
        ["curl", "-sN", f"{server.base_url}/chat/completions", "-H", "Content-Type: application/json", "-d", body],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    events = [line for line in out.splitlines() if line.strip()]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") or line.startswith(":") for line in events)
    assert len(events) >= 3
    head = subprocess.run(
        ["curl", "-si", f"{server.base_url}/chat/completions", "-H", "Content-Type: application/json", "-d", body],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.lower()
    assert "content-type: text/event-stream" in head and "x-accel-buffering: no" in head
