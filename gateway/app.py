"""create_app(): routers, error mapping, middleware, and the lifespan that owns the models."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.errors import install_error_handlers
from gateway.middleware import JSONBodyMiddleware, RequestContextMiddleware
from gateway.registry import ModelFactory, ModelRegistry, RegistryStore
from gateway.routes import admin, chat, completions, health, models
from gateway.services.chat import ChatService
from gateway.services.completions import CompletionService
from gateway.settings import Settings

logger = logging.getLogger(__name__)


def default_factory(settings: Settings) -> ModelFactory:
    def build(spec):  # imported lazily: torch/transformers stay out of the HTTP layer's imports
        from gateway.engine.factory import build_served_model

        return build_served_model(spec, cache_dir=settings.cache_dir)

    return build


def build_registry(settings: Settings, factory: ModelFactory) -> ModelRegistry:
    return ModelRegistry(
        settings.model_specs(),
        factory,
        max_loaded_models=settings.max_loaded_models,
        keep_alive=float(settings.keep_alive),
        wait_seconds=settings.wait_for_model_seconds,
        store=RegistryStore(settings.registry_state_file()),
    )


def create_app(settings: Settings | None = None, *, factory: ModelFactory | None = None) -> FastAPI:
    settings = settings or Settings()
    registry = build_registry(settings, factory or default_factory(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load the preload models in the background: /health answers now, /health/ready turns 200 when
        # they are in; the other models load on their first request.
        loading = asyncio.create_task(registry.load_all())
        try:
            yield
        finally:
            loading.cancel()
            await registry.close()

    app = FastAPI(
        title="Gantry",
        summary="OpenAI-compatible API for local Hugging Face models",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.chat_service = ChatService(registry, settings)
    app.state.completion_service = CompletionService(registry, settings)
    install_error_handlers(app)
    for module in (chat, completions, models, health, admin):
        app.include_router(module.router)
    app.add_middleware(JSONBodyMiddleware)
    app.add_middleware(RequestContextMiddleware)  # outermost: sees every response
    return app
