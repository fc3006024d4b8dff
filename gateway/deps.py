"""FastAPI dependencies: services and registry live on app.state (set in the lifespan).

All `async def`: FastAPI runs a plain `def` dependency in its thread pool, and each such hop waits for the GIL
(up to its 5 ms switch interval while an engine thread runs Python) on every request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.registry import ModelRegistry
from gateway.services.chat import ChatService
from gateway.services.completions import CompletionService
from gateway.services.embeddings import EmbeddingService
from gateway.services.tokenize import TokenizeService
from gateway.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def _wait_for_model(request: Request) -> bool:
    """`x-wait-for-model: true` (the Inference API's options.wait_for_model): wait for a loading model
    instead of getting 503 model_loading."""
    return request.headers.get("x-wait-for-model", "").strip().lower() in ("true", "1", "yes")


async def _chat(request: Request) -> ChatService:
    return request.app.state.chat_service


async def _completions(request: Request) -> CompletionService:
    return request.app.state.completion_service


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
WaitForModelDep = Annotated[bool, Depends(_wait_for_model)]
ChatServiceDep = Annotated[ChatService, Depends(_chat)]
CompletionServiceDep = Annotated[CompletionService, Depends(_completions)]


async def _embeddings(request: Request) -> EmbeddingService:
    return request.app.state.embedding_service


async def _tokenize(request: Request) -> TokenizeService:
    return request.app.state.tokenize_service


EmbeddingServiceDep = Annotated[EmbeddingService, Depends(_embeddings)]
TokenizeServiceDep = Annotated[TokenizeService, Depends(_tokenize)]
