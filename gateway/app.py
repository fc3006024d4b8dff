"""create_app(): routers, error mapping, middleware, and the lifespan that owns the models."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from gateway.access.setup import install_access
from gateway.access_log import AccessLog, PromptCaptureMiddleware
from gateway.audio.body import audio_body_rules
from gateway.errors import install_error_handlers
from gateway.gc_heap import MALLOC_THRESHOLDS, freeze_heap
from gateway.metrics.gateway_metrics import GatewayMetrics
from gateway.middleware import (
    BodySizeLimitMiddleware,
    EnvelopeCORSMiddleware,
    JSONContentTypeMiddleware,
    RequestContextMiddleware,
)
from gateway.openapi import install_openapi
from gateway.registry import ModelFactory, ModelRegistry, RegistryStore
from gateway.routes import admin, chat, completions, embeddings, health, inference_api, metrics, models, tokenize
from gateway.routes import audio as audio_routes
from gateway.routes.compat import install_compat_routes
from gateway.services.audio import AudioService
from gateway.services.chat import ChatService
from gateway.services.completions import CompletionService
from gateway.services.embeddings import EmbeddingService
from gateway.services.inference_api import InferenceAPIService
from gateway.services.tokenize import TokenizeService
from gateway.services.workers import WorkerPool
from gateway.settings import Settings
from gateway.shutdown import Shutdown, ShutdownMiddleware

logger = logging.getLogger(__name__)
CLOSE_TIMEOUT_SECONDS = 3.0


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
    shutdown = Shutdown(settings.shutdown_grace_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load the preload models in the background: /health answers now, /health/ready turns 200 when
        # they are in; the other models load on their first request.
        MALLOC_THRESHOLDS.install()  # before any load: glibc keeps no freed activations beyond its thresholds
        loading = asyncio.create_task(registry.load_all())
        app.state.metrics.gc_pauses.timer.install()
        freeze_heap()  # the app as built lives as long as the process: out of every later full collection
        try:
            yield
        finally:
            app.state.metrics.gc_pauses.timer.remove()
            shutdown.abort()  # gateway/cli.py drained first; under another ASGI host, end what still runs
            loading.cancel()
            workers.close()
            started = time.monotonic()
            try:  # an engine waits for its decode step in progress: seconds on a busy CPU, bounded here
                await asyncio.wait_for(registry.close(), timeout=CLOSE_TIMEOUT_SECONDS)
                logger.info("models closed in %.2f s", time.monotonic() - started)
            except TimeoutError:
                logger.warning("models still closing after %.0f s; exiting anyway", CLOSE_TIMEOUT_SECONDS)

    # /docs and /redoc with Swagger UI and ReDoc served from the package (no CDN: they work offline).
    app = FastAPIOffline(
        title="Gantry",
        summary="OpenAI-compatible API for local Hugging Face models",
        version="0.1.0",
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},  # else Swagger UI asks validator.swagger.io about the spec
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.shutdown = shutdown
    # Called with every finished request's RequestRecord (metrics, access log, token limits append here).
    app.state.request_observers = []
    app.state.metrics = GatewayMetrics(registry)  # GET /metrics; per app, never module-global
    app.state.request_observers += [app.state.metrics.observe, AccessLog()]
    workers = WorkerPool(settings.prepare_threads, settings.prepare_queue)  # shared by both services
    app.state.chat_service = ChatService(registry, settings, workers)
    app.state.completion_service = CompletionService(registry, settings, workers)
    app.state.audio_service = AudioService(registry, settings)
    app.state.inference_api_service = InferenceAPIService(registry)
    app.state.embedding_service = EmbeddingService(settings)
    app.state.tokenize_service = TokenizeService(settings, workers)
    install_error_handlers(app)
    for module in (chat, completions, models, health, admin, inference_api, metrics):
        app.include_router(module.router)
    for module in (embeddings, tokenize):
        app.include_router(module.router)
    app.state.workers = workers
    if settings.compat_routes:  # POST /generate and POST /, the tutorials' shapes
        install_compat_routes(app)
    app.include_router(audio_routes.router)
    install_openapi(app)
    install_middleware(app, settings)
    return app


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Added innermost first: the body checks run before routing; CORS wraps them so a browser can read
    their errors; the request context wraps everything."""
    # Audio uploads (multipart on /v1/audio, raw audio on /models/{id}) are the bodies that are not JSON.
    audio_rules = audio_body_rules(settings.max_audio_bytes)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes, rules=audio_rules)
    app.add_middleware(JSONContentTypeMiddleware, rules=audio_rules)
    # While draining, new requests get a 503 envelope (inside CORS and RequestContext: a browser can read
    # it and it carries an x-request-id).
    app.add_middleware(ShutdownMiddleware, shutdown=app.state.shutdown)
    install_access(app, settings)  # API keys and per-key limits: before any other check, inside CORS
    if settings.cors_origins:
        # No cookies or other credentials: keys travel in headers, which CORS allows without them,
        # and a wildcard origin must never be combined with credentials.
        app.add_middleware(
            EnvelopeCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            allow_credentials=False,
            expose_headers=["x-request-id", "retry-after"],
        )
    if settings.log_prompts:  # keeps the prompt for the log; inside the request context, which opens the record
        app.add_middleware(PromptCaptureMiddleware)
    # outermost: sees every response
    app.add_middleware(RequestContextMiddleware, observers=app.state.request_observers)
