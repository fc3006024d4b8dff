"""Forced tool calls with a tool that takes no arguments always come back as tool calls (real SmolLM2-135M).

LangChain's `tool_choice="any"` is sent as `"required"`; the model used to repeat the call until the
budget ended and the cut JSON came back as content. Every budget, temperature and transport must now
return the call. The combinations run concurrently (the server batches them);
GANTRY_FORCED_CALL_RUNS=20 repeats each one (the acceptance measurement).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import openai
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.integration.conftest import MODEL, RunningServer

RUNS = int(os.environ.get("GANTRY_FORCED_CALL_RUNS", "1"))
ASK = "What time is it?"
COMBINATIONS = [(budget, temperature, stream) for budget in (64, 256) for temperature in (0, 1) for stream in (0, 1)]
NO_ARGUMENTS = {"type": "object", "properties": {}}  # what LangChain sends for a function without parameters


@tool
def get_time() -> str:
    """Get the current time."""
    return "12:00"


def failures(one_run: Callable[[int, float, bool], str | None]) -> list[str]:
    """Run every combination RUNS times, concurrently; the failures as `combination: what came back`."""
    with ThreadPoolExecutor(len(COMBINATIONS)) as pool:
        jobs = {(combo, i): pool.submit(one_run, *combo) for combo in COMBINATIONS for i in range(RUNS)}
    return [
        f"max_tokens, temperature, stream = {combo}: {job.result()}" for (combo, _), job in jobs.items() if job.result()
    ]


def test_langchain_any_with_a_no_argument_tool_always_returns_the_call(server: RunningServer) -> None:
    def one_run(max_tokens: int, temperature: float, stream: bool) -> str | None:
        llm = ChatOpenAI(
            model=MODEL,
            base_url=server.base_url,
            api_key="x",
            temperature=temperature,
            max_tokens=max_tokens,
            max_retries=0,
            timeout=300,
        ).bind_tools([get_time], tool_choice="any")
        if stream:
            chunks = list(llm.stream(ASK))
            message = chunks[0]
            for chunk in chunks[1:]:
                message = message + chunk
        else:
            message = llm.invoke(ASK)
        calls = [(c["name"], c["args"]) for c in message.tool_calls]
        finish = message.response_metadata.get("finish_reason")
        ok = calls == [("get_time", {})] and not message.invalid_tool_calls and not message.content
        return None if ok and finish == "tool_calls" else f"{finish} {message!r}"

    assert not failures(one_run)


def test_openai_required_with_a_no_argument_tool_always_returns_the_call(client: openai.OpenAI) -> None:
    def one_run(max_tokens: int, temperature: float, stream: bool) -> str | None:
        kwargs = {
            "model": MODEL,
            "messages": [{"role": "user", "content": ASK}],
            "tools": [{"type": "function", "function": {"name": "get_time", "parameters": NO_ARGUMENTS}}],
            "tool_choice": "required",
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if stream:
            with client.chat.completions.stream(**kwargs) as events:
                choice = events.get_final_completion().choices[0]
        else:
            choice = client.chat.completions.create(**kwargs).choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        ok = calls == [("get_time", "{}")] and not choice.message.content and choice.finish_reason == "tool_calls"
        return None if ok else f"{choice.finish_reason} {choice.message!r}"

    assert not failures(one_run)
