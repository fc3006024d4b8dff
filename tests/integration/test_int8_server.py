"""`--quantization int8` behind the real server, with the real SmolLM2: int8 activations on AVX-512 VNNI (else
weight-only), the fused decode layers over them, a greedy stream's text alone and among hot streams."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.engine import native
from gateway.engine.int8_vnni import build_vnni_kernel
from tests.integration.conftest import MODEL, RunningServer, start_server, stop_server
from tests.integration.test_batched_streams import QUESTIONS, stream_text


@pytest.fixture(scope="module")
def int8_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("int8"), "--quantization", "int8", "--max-running", "8")
    yield running
    stop_server(running)


def test_int8_streams_keep_their_solo_greedy_text(int8_server: RunningServer, tmp_path: Path) -> None:
    """Decode steps give a row the same bits in any batch (int8 weights and activations alike), so a greedy
    stream keeps its solo text while hot streams join and leave. Its prompt is prefilled alone both times:
    with int8 activations, a prompt prefilled in a burst (its system prompt run once as the burst's shared
    prefix) can round differently from alone and take another greedy path (README: quantization)."""
    base = int8_server.base_url

    async def greedy(client: openai.AsyncOpenAI, started: asyncio.Event) -> tuple[str, str]:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTIONS[0]}], stream=True, temperature=0, max_tokens=48
        )
        text, finish = "", ""
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
            if text:
                started.set()  # its prompt is in: the hot streams may come
        return text, finish

    async def run() -> tuple[tuple, tuple, list]:
        async with openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0, timeout=120) as client:
            solo = await greedy(client, asyncio.Event())
            started = asyncio.Event()
            task = asyncio.create_task(greedy(client, started))
            await asyncio.wait_for(started.wait(), timeout=60)
            hot = [
                stream_text(client, q, temperature=1.8, top_p=1.0, max_tokens=32, seed=i)
                for i, q in enumerate(QUESTIONS[1:])
            ]
            others = await asyncio.gather(*hot)
            return solo, await task, others

    solo, together, others = asyncio.run(run())
    assert together == solo
    assert "Paris" in solo[0], solo[0]  # and the model still knows it
    assert all(finish in ("stop", "length") for _, finish, _ in others)
    details = httpx.get(f"{base}/models/{MODEL}", timeout=10).json()["details"]
    compiled = native._compiler() is not None
    kernel = build_vnni_kernel(tmp_path) if compiled else None
    expected = f"activations per 32 ({kernel.isa})" if kernel else ("weight-only" if compiled else "dynamic")
    assert (details["quantization"], details["int8"]) == ("int8", expected)
    assert details["int8_linears"] == 211  # 30 layers x 7 and the tied output layer
    assert (details["decode_attention"], details["decode_layers"]) == (
        ("kernel", "fused") if compiled else ("sdpa", "torch")
    )
