from __future__ import annotations

from fastapi import APIRouter

from gateway.deps import RegistryDep, TokenizeServiceDep, WaitForModelDep
from gateway.registry import TOKENIZE
from gateway.schemas.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

router = APIRouter(tags=["vllm"])


@router.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=True)
async def tokenize(body: TokenizeRequest, service: TokenizeServiceDep, registry: RegistryDep, wait: WaitForModelDep):
    async with await registry.acquire(body.model, TOKENIZE, wait=wait) as lease:
        return await service.tokenize(body, lease)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(
    body: DetokenizeRequest, service: TokenizeServiceDep, registry: RegistryDep, wait: WaitForModelDep
):
    async with await registry.acquire(body.model, TOKENIZE, wait=wait) as lease:
        return await service.detokenize(body, lease)
