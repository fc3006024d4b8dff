"""FastAPI dependencies: services and registry live on app.state (set in the lifespan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.registry import ModelRegistry
from gateway.services.chat import ChatService
from gateway.services.completions import CompletionService
from gateway.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _chat(request: Request) -> ChatService:
    return request.app.state.chat_service


def _completions(request: Request) -> CompletionService:
    return request.app.state.completion_service


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
ChatServiceDep = Annotated[ChatService, Depends(_chat)]
CompletionServiceDep = Annotated[CompletionService, Depends(_completions)]
