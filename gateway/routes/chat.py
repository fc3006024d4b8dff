from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.deps import ChatServiceDep, RegistryDep, SettingsDep, WaitForModelDep
from gateway.registry import CHAT, Lease
from gateway.routes.forwarding import serve
from gateway.schemas.chat import ChatCompletion, ChatCompletionRequest
from gateway.streaming import sse_response, until_disconnect

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", response_model=ChatCompletion, response_model_exclude_none=False)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    service: ChatServiceDep,
    settings: SettingsDep,
    registry: RegistryDep,
    wait: WaitForModelDep,
):
    # The lease keeps the model loaded until the response's last byte (a stream takes it along).
    async def local(lease: Lease):
        plan = await service.prepare_off_loop(body, lease)  # every 4xx is raised here, before any byte is sent
        if body.stream:
            return sse_response(request, lease.keep(service.stream(plan)), settings.sse_ping_seconds)
        return await until_disconnect(request, service.complete(plan))

    return await serve(request, registry, body.model, CHAT, wait=wait, local=local)  # or an upstream answers
