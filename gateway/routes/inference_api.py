"""POST /models/{model_id}: the Hugging Face Inference API for pipeline entries (errors as `{"error": …}`)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.audio.body import is_audio_body
from gateway.deps import WaitForModelDep
from gateway.errors import InvalidRequestError
from gateway.services.inference_api import InferenceAPIService

router = APIRouter(tags=["inference-api"])


@router.post(
    "/models/{model_id:path}",
    summary="Run a task pipeline (Hugging Face Inference API)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}},
        }
    },
    response_description="The pipeline's own output, as transformers.pipeline(...) returns it.",
)
async def run_pipeline(model_id: str, request: Request, wait: WaitForModelDep) -> JSONResponse:
    service: InferenceAPIService = request.app.state.inference_api_service
    raw = await request.body()
    if is_audio_body(request):  # an ASR model's audio, sent as the body itself (Content-Type: audio/*)
        return JSONResponse(await service.infer(model_id, None, wait=wait, audio=raw))
    try:
        body = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"Request body is not valid JSON: {exc}") from exc
    return JSONResponse(await service.infer(model_id, body, wait=wait))
