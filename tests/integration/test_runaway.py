"""The README's prompts at default settings end on their own, and nothing runs away without max_tokens.

A bounded version of the measurement in the README (20 runs of each prompt): a few runs of each, sent
together the way the README's clients send them (openai SDK, LangChain streaming), no max_tokens, no
sampling fields. A user once waited 26 minutes for "What is the capital of France?".
"""

from __future__ import annotations

import asyncio

import httpx
import openai
from langchain_openai import ChatOpenAI

from gateway.settings import EMBEDDED_DEFAULT_MAX_TOKENS
from tests.integration.conftest import MODEL, RunningServer

RUNS = 8  # of each prompt, all sent together
# Sampled answers have a long tail: of 120 runs of each (2026-12-05, 12 at a time) "Hi" never passed 25 tokens,
# but a joke now and then rambles on (one reached 249 tokens; one in a suite hit the 256 cap) and "What is the
# capital of France?" ran to the cap about once in several hundred. So: every run ends with `stop` or exactly
# at the cap (the cap is what bounds a runaway), "Hi" always with `stop`, and at most two of the others at the cap.
LONGER_AT_CAP = 2


async def _sdk_chat(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, int]:
    r = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])
    return r.choices[0].finish_reason, r.usage.completion_tokens


async def _langchain_stream(llm: ChatOpenAI, prompt: str) -> tuple[str, int]:
    full = None
    async for chunk in llm.astream(prompt):
        full = chunk if full is None else full + chunk
    assert full is not None and full.usage_metadata is not None  # stream_usage: the server's usage chunk
    return full.response_metadata.get("finish_reason"), full.usage_metadata["output_tokens"]


def test_readme_prompts_end_with_stop_at_default_settings(server: RunningServer) -> None:
    async def run() -> dict[str, list[tuple[str, int]]]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=300) as sdk:
            llm = ChatOpenAI(
                model=MODEL, base_url=server.base_url, api_key="x", max_retries=0, timeout=300, stream_usage=True
            )
            prompts = {
                "Hi": lambda: _sdk_chat(sdk, "Hi"),
                "Tell me a joke": lambda: _langchain_stream(llm, "Tell me a joke"),
                "What is the capital of France?": lambda: _sdk_chat(sdk, "What is the capital of France?"),
            }
            results = await asyncio.gather(*[make() for make in prompts.values() for _ in range(RUNS)])
        return {name: results[i * RUNS : (i + 1) * RUNS] for i, name in enumerate(prompts)}

    outcomes = asyncio.run(run())
    assert [reason for reason, _ in outcomes["Hi"]] == ["stop"] * RUNS, outcomes["Hi"]
    capped = []
    for prompt in ("Tell me a joke", "What is the capital of France?"):
        for reason, size in outcomes[prompt]:
            assert reason in ("stop", "length"), (prompt, outcomes[prompt])
            if reason == "length":
                capped.append((prompt, size))
    assert len(capped) <= LONGER_AT_CAP, outcomes
    assert all(tokens == EMBEDDED_DEFAULT_MAX_TOKENS for _, tokens in capped), capped


def test_a_request_without_max_tokens_is_capped_by_the_model_default(server: RunningServer) -> None:
    detail = httpx.get(f"{server.base_url}/models/{MODEL}", timeout=10).json()
    assert detail["details"]["default_max_tokens"] == EMBEDDED_DEFAULT_MAX_TOKENS
    # a generation that cannot stop on its own (EOS ignored) ends at the cap, not at the 8192-token window
    response = httpx.post(
        f"{server.base_url}/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Count to a thousand."}], "ignore_eos": True},
        timeout=300,
    )
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == EMBEDDED_DEFAULT_MAX_TOKENS
