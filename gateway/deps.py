"""FastAPI dependencies: services and registry live on app.state (set in the lifespan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.registry import ModelRegistry
from gateway.services.chat import ChatService
from gateway.services.completions import CompletionService
from gateway.services.embeddings import EmbeddingService
from gateway.services.tokenize import TokenizeService
from gateway.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _wait_for_model(request: Request) -> bool:
    """`x-wait-for-model: true` (the Inference API's options.wait_for_model): wait for a loading model
    instead of getting 503 model_loading."""
    return request.headers.get("x-wait-for-model", "").strip().lower() in ("true", "1", "yes")


def _chat(request: Request) -> ChatService:
    return request.app.state.chat_service


def _completions(request: Request) -> CompletionService:
    return request.app.state.completion_service


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
WaitForModelDep = Annotated[bool, Depends(_wait_for_model)]
ChatServiceDep = Annotated[ChatService, Depends(_chat)]
CompletionServiceDep = Annotated[CompletionService, Depends(_completions)]


def _embeddings(request: Request) -> EmbeddingService:
    return request.app.state.embedding_service


def _tokenize(request: Request) -> TokenizeService:
    return request.app.state.tokenize_service


EmbeddingServiceDep = Annotated[EmbeddingService, Depends(_embeddings)]
TokenizeServiceDep = Annotated[TokenizeService, Depends(_tokenize)]
