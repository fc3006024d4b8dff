"""Several FakeEngine-backed models behind the real app, through the create_app(settings, factory=...) seam."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi import FastAPI

from gateway.app import create_app
from gateway.engine.fake import FakeEngine
from gateway.models import ServedModel
from gateway.registry import ModelRegistry
from gateway.settings import ModelSpec, Settings
from tests.unit.helpers import USER, asgi_client, qwen_pipeline, qwen_tokenizer

ADMIN_KEY = "test-admin-key"


@dataclass
class ClosingEngine(FakeEngine):
    closed: bool = False

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeModels:
    """A factory that builds a fresh ClosingEngine per load and counts loads per model name.

    `gates[name]`: a load of that model blocks until the event is set. `broken`: names whose load raises.
    `pieces`/`delay`: the scripts of the engines it builds.
    """

    pieces: list[str] = field(default_factory=lambda: ["Hello", " world", "!"])
    delay: float = 0.0
    loads: Counter = field(default_factory=Counter)
    engines: dict[str, list[ClosingEngine]] = field(default_factory=dict)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, spec: ModelSpec) -> ServedModel:
        gate = self.gates.get(spec.name)
        if gate is not None:
            assert gate.wait(timeout=20), f"test never opened the gate of {spec.name}"
        with self.lock:
            self.loads[spec.name] += 1
        if spec.name in self.broken:
            raise FileNotFoundError(f"no weights at {spec.source}")
        engine = ClosingEngine(pieces=list(self.pieces), delay=self.delay)
        self.engines.setdefault(spec.name, []).append(engine)
        return ServedModel(
            spec=spec, pipeline=qwen_pipeline(), engine=engine, context_length=4096, vocab_size=len(qwen_tokenizer())
        )


def models_file(tmp_path: Path, *models: dict[str, Any]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": list(models)}), encoding="utf-8")
    return path


def multi_settings(tmp_path: Path, *models: dict[str, Any], **overrides: Any) -> Settings:
    values: dict[str, Any] = {"models_file": models_file(tmp_path, *models), "state_file": tmp_path / "state.json"}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class Multi:
    app: FastAPI
    client: httpx.AsyncClient
    models: FakeModels

    @property
    def registry(self) -> ModelRegistry:
        return self.app.state.registry

    def state(self, name: str) -> str:
        return self.registry.find(name).state.value

    async def chat(self, model: str, *, wait: bool = False, **body: Any) -> httpx.Response:
        headers = {"x-wait-for-model": "true"} if wait else {}
        body = {"model": model, "messages": USER, **body}
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)

    async def admin(self, method: str, path: str, *, key: str | None = ADMIN_KEY, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return await self.client.request(method, f"/admin{path}", headers=headers, **kwargs)


@asynccontextmanager
async def open_multi(settings: Settings, models: FakeModels | None = None) -> AsyncIterator[Multi]:
    """The app with its preload models loaded (ASGITransport skips the lifespan), closed afterwards."""
    models = models or FakeModels()
    app = create_app(settings, factory=models)
    await app.state.registry.load_all()
    try:
        async with asgi_client(app) as client:
            yield Multi(app, client, models)
    finally:
        for gate in models.gates.values():
            gate.set()
        await app.state.registry.close()
