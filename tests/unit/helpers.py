"""Builders for an app over FakeEngine (real tokenizer + real PromptPipeline), SSE parsing, envelope checks."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from adapters import AdapterRegistry, FamilyAdapter, PromptPipeline
from gateway.app import create_app
from gateway.engine.fake import FakeEngine
from gateway.engine.types import GenerationDelta, GenerationRequest
from gateway.models import ServedModel
from gateway.registry import ModelFactory
from gateway.settings import ModelSpec, Settings
from tests.conftest import tokenizer_fixture

QWEN_EOS = (151645, 151643)
MODEL = "fake-model"
ALIASES = ("org/model-name", "short")
USER = [{"role": "user", "content": "Say hello"}]


@functools.cache
def qwen_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_fixture("qwen2.5-instruct"))


def build_pipeline(adapter: FamilyAdapter | None = None) -> PromptPipeline:
    return PromptPipeline.build(
        qwen_tokenizer(),
        adapter or AdapterRegistry().get("generic"),
        config={},
        generation_config={"eos_token_id": list(QWEN_EOS)},
    )


@functools.cache
def qwen_pipeline() -> PromptPipeline:
    return build_pipeline()


@dataclass
class CountingEngine(FakeEngine):
    """FakeEngine that also records how many deltas each request actually handed out."""

    pulled: dict[str, int] = field(default_factory=dict)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        self.pulled[request.request_id] = 0
        async with aclosing(super().generate(request)) as deltas:
            async for delta in deltas:
                self.pulled[request.request_id] += 1
                yield delta


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"model": "org/fake-source", "served_model_name": MODEL, "model_aliases": list(ALIASES)}
    values.setdefault("default_embedding_model", "")  # one model, as these tests count them
    values.update(overrides)
    return Settings(_env_file=None, **values)


def served_factory(
    engine: FakeEngine, *, context_length: int = 4096, pipeline: PromptPipeline | None = None
) -> ModelFactory:
    def build(spec: ModelSpec) -> ServedModel:
        return ServedModel(
            spec=spec,
            pipeline=pipeline or qwen_pipeline(),
            engine=engine,
            context_length=context_length,
            vocab_size=len(qwen_tokenizer()),
        )

    return build


@dataclass
class Gateway:
    app: FastAPI
    client: httpx.AsyncClient
    engine: FakeEngine

    async def chat(self, **body: Any) -> httpx.Response:
        body.setdefault("messages", USER)
        body.setdefault("model", MODEL)
        return await self.client.post("/v1/chat/completions", json=body)

    async def completion(self, **body: Any) -> httpx.Response:
        body.setdefault("model", MODEL)
        return await self.client.post("/v1/completions", json=body)


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@asynccontextmanager
async def open_gateway(
    engine: FakeEngine | None = None,
    *,
    settings: Settings | None = None,
    factory: ModelFactory | None = None,
    context_length: int = 4096,
    pipeline: PromptPipeline | None = None,
    load: bool = True,
) -> AsyncIterator[Gateway]:
    """An app whose models are FakeEngine-backed; ASGITransport skips the lifespan, so load here."""
    engine = engine if engine is not None else FakeEngine()
    factory = factory or served_factory(engine, context_length=context_length, pipeline=pipeline)
    app = create_app(settings or make_settings(), factory=factory)
    if load:
        await app.state.registry.load_all()
    async with asgi_client(app) as client:
        yield Gateway(app, client, engine)


# ---- SSE ---------------------------------------------------------------------------------------------


def sse_payloads(body: str) -> list[str]:
    """Strictly parse an SSE body: every event is one `data: ` line (or a `:` comment) + a blank line."""
    assert body.endswith("\n\n") or body.endswith("\r\n\r\n"), f"body does not end with a blank line: {body[-40:]!r}"
    payloads = []
    for block in body.replace("\r\n", "\n").split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 1, f"multi-line event: {block!r}"
        line = lines[0]
        if line.startswith(":"):
            assert line.startswith(": ping"), f"unexpected comment {line!r}"
            continue
        assert line.startswith("data: "), f"non-data SSE line: {line!r}"
        data = line[len("data: ") :]
        assert data, "empty data event"
        payloads.append(data)
    return payloads


def sse_events(body: str) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, asserting it ends with exactly one `data: [DONE]`."""
    payloads = sse_payloads(body)
    assert payloads and payloads[-1] == "[DONE]", f"stream does not end with [DONE]: {payloads[-1:]}"
    assert "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


def is_compact(payload: str) -> bool:
    return payload == json.dumps(json.loads(payload), separators=(",", ":"), ensure_ascii=False)


def stream_text(events: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for e in events
        for c in e.get("choices", [])
        if c["index"] == index and "delta" in c
    )


def finish_reasons(events: list[dict[str, Any]]) -> list[str]:
    return [c["finish_reason"] for e in events for c in e.get("choices", []) if c["finish_reason"]]


def chat_text_and_finish(response: httpx.Response, stream: bool) -> tuple[str, list[str]]:
    """Choice 0's text and the finish reasons of a chat response, streamed or not."""
    if stream:
        events = sse_events(response.text)
        return stream_text(events), finish_reasons(events)
    choice = response.json()["choices"][0]
    return choice["message"]["content"], [choice["finish_reason"]]


def completion_stream_text(events: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(c["text"] for e in events for c in e.get("choices", []) if c["index"] == index)


# ---- errors ------------------------------------------------------------------------------------------


def assert_envelope(
    response: httpx.Response,
    status: int,
    *,
    param: Any = ...,
    code: Any = ...,
    error_type: str | None = None,
    extra: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """`extra`: keys an error object may carry beyond the standard four (e.g. estimated_time)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} | extra, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param is not ...:
        assert error["param"] == param, error
    if code is not ...:
        assert error["code"] == code, error
    if error_type is not None:
        assert error["type"] == error_type, error
    return error


# ---- raw ASGI driving (httpx's ASGITransport buffers the whole body and never disconnects early) -------


@dataclass
class RawExchange:
    status: int | None
    chunks: list[bytes]
    task: asyncio.Task


async def post_then_disconnect(
    app: FastAPI,
    path: str,
    body: dict[str, Any],
    *,
    disconnect_when: Callable[[list[bytes]], bool] | None = None,
    disconnect_after: float | None = None,
) -> RawExchange:
    """POST through the ASGI interface; report `http.disconnect` once `disconnect_when(chunks)` holds
    (checked on every send) or `disconnect_after` seconds have passed."""
    disconnected = asyncio.Event()
    request_sent = False
    chunks: list[bytes] = []
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
        if disconnect_when is not None and disconnect_when(chunks):
            disconnected.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
        "server": ("test", 80),
        "client": ("127.0.0.1", 5000),
    }
    task = asyncio.ensure_future(app(scope, receive, send))
    if disconnect_after is not None:
        asyncio.get_running_loop().call_later(disconnect_after, disconnected.set)
    exchange = RawExchange(status=None, chunks=chunks, task=task)
    await asyncio.wait_for(disconnected.wait(), timeout=5)
    exchange.status = status[0] if status else None
    return exchange


async def wait_until(predicate: Callable[[], bool], timeout: float = 1.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
