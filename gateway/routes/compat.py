"""The tutorials' APIs: POST /generate (the distilgpt2 FastAPI tutorial) and POST / (the self-hosted LLM
tutorials: Qwen2, OpenELM, DeepSeek-Coder-V2, Phi-4), in their exact shapes. On unless
GANTRY_COMPAT_ROUTES=false; their errors are `{"detail": …}` (gateway/errors.py: detail_error_paths).

They wait for a loading model (up to wait_for_model_seconds) instead of a 503: the tutorials' clients do
not retry.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, FastAPI, Request

from gateway.deps import RegistryDep
from gateway.registry import CHAT, COMPLETION
from gateway.schemas.compat import (
    CHAT_EXAMPLES,
    GENERATE_EXAMPLES,
    ChatRequest,
    ChatResponse,
    GenerateRequest,
    GenerateResponse,
)
from gateway.services.compat import CompatService
from gateway.streaming import until_disconnect

router = APIRouter(tags=["tutorial-compatible"])
PATHS = ("/", "/generate")


def _service(request: Request) -> CompatService:
    return request.app.state.compat_service


@router.post("/generate", response_model=GenerateResponse, summary="Generate text (distilgpt2 tutorial)")
async def generate(
    body: Annotated[GenerateRequest, Body(openapi_examples=GENERATE_EXAMPLES)],
    request: Request,
    registry: RegistryDep,
) -> GenerateResponse:
    """`{"prompt"}` → `{"generated_text": prompt + continuation}`, generated as the tutorial's
    `model.generate(max_length=200, num_beams=5, no_repeat_ngram_size=2, early_stopping=True)`."""
    service = _service(request)
    async with await registry.acquire(body.model, COMPLETION, wait=True) as lease:
        plan = await service.prepare_generate(body, lease)
        return await until_disconnect(request, service.generate(plan))


@router.post("/", response_model=ChatResponse, summary="Chat with history (self-hosted LLM tutorials)")
async def chat(
    body: Annotated[ChatRequest, Body(openapi_examples=CHAT_EXAMPLES)],
    request: Request,
    registry: RegistryDep,
) -> ChatResponse:
    """`{"prompt", "history", "max_length", "top_p", "top_k", "temperature", "repetition_penalty"}` →
    `{"response", "history", "status": 200, "time"}`; history as `[[q, a], …]` or role/content messages."""
    service = _service(request)
    async with await registry.acquire(body.model, CHAT, wait=True) as lease:
        plan = await service.prepare_chat(body, lease)
        return await until_disconnect(request, service.chat(plan))


def install_compat_routes(app: FastAPI) -> None:
    app.state.compat_service = CompatService(app.state.registry, app.state.settings, app.state.workers)
    app.state.detail_error_paths = frozenset(PATHS)
    app.include_router(router)
