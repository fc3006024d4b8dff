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

RUNS = 4  # of each prompt; the README's figures come from 20


async def _sdk_chat(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, int]:
    r = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])
    return r.choices[0].finish_reason, r.usage.completion_tokens


async def _langchain_stream(llm: ChatOpenAI, prompt: str) -> tuple[str, int]:
    full = None
    async for chunk in llm.astream(prompt):
        full = chunk if full is None else full + chunk
    assert full is not None
    return full.response_metadata.get("finish_reason"), len(full.content)


def test_readme_prompts_end_with_stop_at_default_settings(server: RunningServer) -> None:
    async def run() -> dict[str, list[tuple[str, int]]]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=300) as sdk:
            llm = ChatOpenAI(model=MODEL, base_url=server.base_url, api_key="x", max_retries=0, timeout=300)
            prompts = {
                "Hi": lambda: _sdk_chat(sdk, "Hi"),
                "Tell me a joke": lambda: _langchain_stream(llm, "Tell me a joke"),
                "What is the capital of France?": lambda: _sdk_chat(sdk, "What is the capital of France?"),
            }
            results = await asyncio.gather(*[make() for make in prompts.values() for _ in range(RUNS)])
        return {name: results[i * RUNS : (i + 1) * RUNS] for i, name in enumerate(prompts)}

    for prompt, outcomes in asyncio.run(run()).items():
        assert [reason for reason, _ in outcomes] == ["stop"] * RUNS, (prompt, outcomes)


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
