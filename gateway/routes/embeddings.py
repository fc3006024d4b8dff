from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.deps import EmbeddingServiceDep, RegistryDep
from gateway.registry import EMBEDDINGS, Lease
from gateway.routes.forwarding import serve
from gateway.schemas.embeddings import EmbeddingRequest, EmbeddingResponse

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, service: EmbeddingServiceDep, registry: RegistryDep
):
    async def local(lease: Lease) -> Response:
        content, _ = await service.create(body, lease)
        return Response(content=content, media_type="application/json")  # encoded in the model's thread

    # An embedding model loads in seconds on its first request: that request waits for it (RAG clients do
    # not send x-wait-for-model), bounded by wait_for_model_seconds. An upstream entry forwards instead.
    return await serve(request, registry, body.model, EMBEDDINGS, wait=True, local=local)
