from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.deps import CompletionServiceDep, RegistryDep, SettingsDep, WaitForModelDep
from gateway.registry import COMPLETION, Lease
from gateway.routes.forwarding import serve
from gateway.schemas.completions import Completion, CompletionRequest
from gateway.streaming import sse_response, until_disconnect

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/completions", response_model=Completion)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    service: CompletionServiceDep,
    settings: SettingsDep,
    registry: RegistryDep,
    wait: WaitForModelDep,
):
    # The lease keeps the model loaded until the response's last byte (a stream takes it along).
    async def local(lease: Lease):
        plan = await service.prepare_off_loop(body, lease)
        if body.stream:
            return sse_response(request, lease.keep(service.stream(plan)), settings.sse_ping_seconds)
        return await until_disconnect(request, service.complete(plan))

    return await serve(request, registry, body.model, COMPLETION, wait=wait, local=local)  # or an upstream answers
