"""OpenAI speech to text: POST /v1/audio/transcriptions and /v1/audio/translations (multipart uploads)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from gateway.audio.formats import MEDIA_TYPES
from gateway.deps import WaitForModelDep
from gateway.schemas.audio import Transcription, TranscriptionForm, TranscriptionVerbose
from gateway.services.audio import AudioService

router = APIRouter(prefix="/v1/audio", tags=["openai"])


async def _service(request: Request) -> AudioService:
    return request.app.state.audio_service


AudioServiceDep = Annotated[AudioService, Depends(_service)]

# The 200 answers besides JSON: response_format text, srt and vtt.
_TEXT_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "json: `Transcription`; verbose_json: `TranscriptionVerbose`; text, srt, vtt: the text.",
        "content": {MEDIA_TYPES[f].split(";")[0]: {"schema": {"type": "string"}} for f in ("text", "srt", "vtt")},
    }
}


@router.post(
    "/transcriptions",
    response_model=Transcription | TranscriptionVerbose,
    responses=_TEXT_ANSWERS,
    summary="Transcribe audio",
)
async def create_transcription(
    form: Annotated[TranscriptionForm, Form()], service: AudioServiceDep, wait: WaitForModelDep
):
    return _respond(await service.transcribe(form, "transcribe", wait=wait), form.response_format)


@router.post(
    "/translations",
    response_model=Transcription | TranscriptionVerbose,
    responses=_TEXT_ANSWERS,
    summary="Translate audio into English text",
)
async def create_translation(
    form: Annotated[TranscriptionForm, Form()], service: AudioServiceDep, wait: WaitForModelDep
):
    return _respond(await service.transcribe(form, "translate", wait=wait), form.response_format)


def _respond(body: dict[str, Any] | str, response_format: str):
    if isinstance(body, dict):
        return JSONResponse(body)
    return PlainTextResponse(body, media_type=MEDIA_TYPES[response_format])
