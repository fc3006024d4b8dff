from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.deps import EmbeddingServiceDep, RegistryDep
from gateway.registry import EMBEDDINGS
from gateway.schemas.embeddings import EmbeddingRequest, EmbeddingResponse

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(body: EmbeddingRequest, service: EmbeddingServiceDep, registry: RegistryDep):
    # An embedding model loads in seconds on its first request: that request waits for it (RAG clients do
    # not send x-wait-for-model), bounded by wait_for_model_seconds.
    async with await registry.acquire(body.model, EMBEDDINGS, wait=True) as lease:
        content, _ = await service.create(body, lease)
    return Response(content=content, media_type="application/json")  # encoded in the model's thread
