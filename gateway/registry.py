"""Model registry: ids and aliases → served models, with per-model load state.

Models load in the background after startup so /health answers at once and /health/ready (and
requests) get 503 until the model is ready. Lazy load and idle unload slot in here later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from gateway.errors import ModelNotFoundError, ModelNotReadyError
from gateway.models import ServedModel
from gateway.settings import ModelSpec

logger = logging.getLogger(__name__)

ModelFactory = Callable[[ModelSpec], ServedModel]


class ModelState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ModelEntry:
    spec: ModelSpec
    state: ModelState = ModelState.LOADING
    served: ServedModel | None = None
    error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))


class ModelRegistry:
    def __init__(self, specs: list[ModelSpec], factory: ModelFactory) -> None:
        if not specs:
            raise ValueError("at least one model must be configured")
        self._factory = factory
        self._entries = [ModelEntry(spec) for spec in specs]
        self._by_id = {model_id: entry for entry in self._entries for model_id in entry.spec.ids()}

    @property
    def default(self) -> ModelEntry:
        return self._entries[0]

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    async def load_all(self) -> None:
        """Load every configured model, one after another, off the event loop."""
        for entry in self._entries:
            try:
                entry.served = await asyncio.to_thread(self._factory, entry.spec)
                entry.state = ModelState.READY
            except Exception as exc:  # a broken model must not take the server down
                logger.exception("model %s failed to load", entry.spec.name)
                entry.state, entry.error = ModelState.FAILED, f"{type(exc).__name__}: {exc}"

    def find(self, model_id: str | None) -> ModelEntry:
        if model_id is None or model_id == "":
            return self.default
        entry = self._by_id.get(model_id)
        if entry is None:
            raise ModelNotFoundError(
                f"The model `{model_id}` does not exist. Available: {', '.join(sorted(self._by_id))}.",
                param="model",
            )
        return entry

    def get(self, model_id: str | None) -> tuple[str, ServedModel]:
        """The served model for a request's `model` field, and the id to echo back."""
        entry = self.find(model_id)
        if entry.state is ModelState.LOADING:
            raise ModelNotReadyError(f"The model `{entry.spec.name}` is still loading; retry shortly.")
        if entry.state is ModelState.FAILED or entry.served is None:
            raise ModelNotReadyError(
                f"The model `{entry.spec.name}` failed to load: {entry.error}", retry_after=60, permanent=True
            )
        return (model_id or entry.spec.name), entry.served

    async def close(self) -> None:
        for entry in self._entries:
            if entry.served is not None:
                if entry.served.grammar is not None:
                    entry.served.grammar.close()  # also stops a compile in progress
                await entry.served.engine.close()
