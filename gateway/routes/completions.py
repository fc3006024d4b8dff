from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.deps import CompletionServiceDep, SettingsDep
from gateway.schemas.completions import Completion, CompletionRequest
from gateway.streaming import sse_response, until_disconnect

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/completions", response_model=Completion)
async def create_completion(
    body: CompletionRequest, request: Request, service: CompletionServiceDep, settings: SettingsDep
):
    plan = await service.prepare_off_loop(body)
    if body.stream:
        return sse_response(request, service.stream(plan), settings.sse_ping_seconds)
    return await until_disconnect(request, service.complete(plan))
