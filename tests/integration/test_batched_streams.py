"""The batched engine behind the real server: concurrent streams share steps, keep their own text, 429 beyond limits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.engine import native
from tests.integration.conftest import MODEL, RunningServer, start_server, stop_server

QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "Write a haiku about rain.",
    "What is 2 + 2?",
    "Say hello in Spanish.",
    "List two animals.",
    "What is the opposite of hot?",
    "Describe the sky in five words.",
]


async def stream_text(client: openai.AsyncOpenAI, question: str, **kwargs) -> tuple[str, str, int]:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    )
    text, finish, tokens = "", "", 0
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish, tokens


def test_eight_concurrent_streams_on_the_default_server(server: RunningServer) -> None:
    """The default server (engine auto → batched): 8 streams at once all finish.

    Its dtype is auto (bf16 on CPUs with bf16 instructions), where a row's numbers may move with the
    batch; bit-identical greedy text in and out of a batch is checked at fp32 below.
    """

    async def run() -> list:  # the client is closed inside its loop: no callbacks on a closed loop later
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=120) as client:
            return await asyncio.gather(*[stream_text(client, q, temperature=0, max_tokens=24) for q in QUESTIONS])

    together = asyncio.run(run())
    assert all(text and finish in ("stop", "length") and 0 < tokens <= 24 for text, finish, tokens in together)
    details = httpx.get(f"{server.base_url}/models/{MODEL}", timeout=10).json()["details"]
    assert details["engine"] == "batched"
    assert details["forward"] == "lean"  # SmolLM2 is a Llama: the lean stack passed its check at start
    # decode rows attend through the C kernel where this machine compiles it (it agreed with SDPA at start) and
    # the cache is fp32; the auto dtype is bf16 on CPUs with bf16 instructions, where SDPA stays
    native_attention = details["dtype"] == "float32" and native._compiler() is not None
    assert details["decode_attention"] == ("kernel" if native_attention else "sdpa")
    assert details["decode_layers"] == ("fused" if native_attention else "torch")


@pytest.fixture(scope="module")
def small_fp32_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("batched"), "--dtype", "float32", "--max-running", "8", "--max-queued", "0"
    )
    yield running
    stop_server(running)


def test_greedy_stream_keeps_its_solo_text_among_hot_streams(small_fp32_server: RunningServer) -> None:
    base = small_fp32_server.base_url

    async def run() -> tuple[tuple, list]:
        async with openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0, timeout=120) as client:
            solo = await stream_text(client, QUESTIONS[0], temperature=0, max_tokens=40)
            hot = [
                stream_text(client, q, temperature=1.8, top_p=1.0, max_tokens=40, seed=i)
                for i, q in enumerate(QUESTIONS[1:])
            ]
            together = await asyncio.gather(stream_text(client, QUESTIONS[0], temperature=0, max_tokens=40), *hot)
            return solo, together

    solo, together = asyncio.run(run())
    assert together[0] == solo
    assert all(finish in ("stop", "length") for _, finish, _ in together)
    details = httpx.get(f"{base}/models/{MODEL}", timeout=10).json()["details"]
    # at fp32 the decode rows attended through the C kernel and ran the fused layers (where they compile): the same
    # text alone and in a batch
    compiled = native._compiler() is not None
    assert (details["decode_attention"], details["decode_layers"]) == (
        ("kernel", "fused") if compiled else ("sdpa", "torch")
    )


def test_beyond_running_plus_queued_is_429_and_dropped_streams_free_slots(small_fp32_server: RunningServer) -> None:
    base = small_fp32_server.base_url
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long essay."}], "stream": True}
    long = {**body, "max_tokens": 2000, "ignore_eos": True, "temperature": 0.7}

    async def run() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            streams = [http.stream("POST", f"{base}/chat/completions", json=long) for _ in range(8)]
            responses = [await s.__aenter__() for s in streams]
            readers = [response.aiter_lines() for response in responses]  # kept: dropping one closes it
            for response, reader in zip(responses, readers, strict=True):
                assert response.status_code == 200
                line = ""
                while not (line.startswith("data: ") and '"content":"' in line and '"content":""' not in line):
                    line = await reader.__anext__()  # until this stream's generation is running
            refused = await http.post(f"{base}/chat/completions", json={**body, "max_tokens": 5})
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "overloaded"
            async with openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0) as sdk:
                with pytest.raises(openai.RateLimitError):
                    await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
            for stream in streams[:4]:  # four clients go away mid-stream
                await stream.__aexit__(None, None, None)
            for _ in range(100):  # their slots come back within a step or two
                ok = await http.post(f"{base}/chat/completions", json={**body, "stream": False, "max_tokens": 4})
                if ok.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 4
            for stream in streams[4:]:
                await stream.__aexit__(None, None, None)

    asyncio.run(run())
