"""Through the real server: 4 streams + 1 non-stream complete normally while other requests' rows fail.

The failing rows are planted by tests/integration/faulty_gateway.py (for two seeds: the row's generator
fails as it joins, or a logits processor fails at its third step); the rest is the production server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from tests.integration.conftest import MODEL, RunningServer, start_server, stop_server
from tests.integration.faulty_gateway import JOIN_FAULT_SEED, STEP_FAULT_SEED

pytestmark = pytest.mark.anyio
PROMPTS = ["Count from one to ten.", "Name three colours.", "Say hello in French.", "List some fruit.", "What is 2+2?"]


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("faulty"), module="tests.integration.faulty_gateway")
    yield running
    stop_server(running)


async def _plain(client: openai.AsyncOpenAI, content: str, **kwargs) -> tuple[str, str | None]:
    kwargs = {"max_tokens": 48, "temperature": 0, **kwargs}
    response = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kwargs
    )
    return response.choices[0].message.content or "", response.choices[0].finish_reason


async def test_four_streams_and_a_request_complete_while_rows_fail(
    faulty_server: RunningServer, anyio_backend: str
) -> None:
    client = openai.AsyncOpenAI(base_url=faulty_server.base_url, api_key="x", max_retries=0, timeout=300)
    alone = [await _plain(client, content) for content in PROMPTS]  # greedy: the same text in any batch
    started = asyncio.Event()

    async def stream(content: str) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=48, temperature=0, stream=True
        )
        text, finish = "", None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                started.set()
        return text, finish

    async def failing(seed: int) -> BaseException | None:
        await started.wait()  # joins a batch that is already decoding
        try:
            await _plain(client, "Tell me a long story.", temperature=1.0, seed=seed, max_tokens=200)
        except openai.APIError as exc:
            return exc
        return None

    results = await asyncio.gather(
        *[stream(c) for c in PROMPTS[:4]],
        _plain(client, PROMPTS[4]),
        failing(JOIN_FAULT_SEED),
        failing(STEP_FAULT_SEED),
    )
    together, errors = results[:5], results[5:]
    assert all(isinstance(error, openai.APIError) for error in errors)  # each fault reached its own request ...
    for (text, finish), (solo_text, solo_finish) in zip(together, alone, strict=True):  # ... and no other
        assert finish == solo_finish and finish in ("stop", "length")
        assert text == solo_text
    assert await _plain(client, PROMPTS[0]) == alone[0]  # the engine carries on
    await client.close()
