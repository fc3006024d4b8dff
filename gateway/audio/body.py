"""Audio arriving over HTTP: which requests may send it (and how big), and reading it into samples.

Used by /v1/audio (multipart uploads) and by the Inference-API route `POST /models/{id}` (the raw audio body,
`Content-Type: audio/*`, or base64 `inputs` in JSON as huggingface_hub sends it with parameters).
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import numpy as np
from fastapi import Request, UploadFile

from gateway.audio.decode import SAMPLE_RATE, AudioDecodeError, decode_audio
from gateway.errors import PayloadTooLargeError
from gateway.middleware import BodyRule, media_matches

SPEECH_PREFIX = "/v1/audio/"
INFERENCE_PREFIX = "/models/"
# Raw audio bodies: any audio type, WebM/MP4/Ogg containers (browsers record into them; Python's mimetypes
# calls .webm video/webm) and octet-stream. None is a CORS-safelisted type: a cross-origin page still needs a
# preflight to send one, as with JSON (see JSONContentTypeMiddleware).
RAW_AUDIO_TYPES = ("audio/*", "video/webm", "video/mp4", "video/ogg", "application/octet-stream")
MULTIPART_SLACK = 64 << 10  # the form's other fields and boundaries around the file


def audio_body_rules(max_audio_bytes: int) -> list[BodyRule]:
    """For the body middlewares: multipart on /v1/audio and raw audio on /models/{id}, up to max_audio_bytes."""
    return [
        BodyRule(SPEECH_PREFIX, ("multipart/form-data",), max_audio_bytes + MULTIPART_SLACK),
        BodyRule(INFERENCE_PREFIX, RAW_AUDIO_TYPES, max_audio_bytes),
    ]


def is_audio_body(request: Request) -> bool:
    """A raw audio body (rather than JSON) on the Inference-API route."""
    return media_matches(request.headers.get("content-type"), RAW_AUDIO_TYPES)


async def read_audio_body(request: Request, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The request body (raw audio, the size already bounded by the middleware) as mono float32 samples."""
    data = await request.body()
    return await decode_off_loop(data, sample_rate)


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """A multipart file's bytes; 413 beyond max_bytes (the body limit also counts the form's other fields)."""
    if upload.size is not None and upload.size > max_bytes:
        raise _too_large(upload.size, max_bytes)
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(None, max_bytes)
    return data


def audio_from_inputs(inputs: object) -> bytes:
    """`inputs` of a JSON request to an ASR model: base64 audio (huggingface_hub sends it so when the call
    has parameters)."""
    if not isinstance(inputs, str) or not inputs:
        raise AudioDecodeError("`inputs` must be base64-encoded audio (or send the audio itself as the body).")
    try:
        return base64.b64decode(inputs, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioDecodeError("`inputs` is not valid base64 audio.") from exc


async def decode_off_loop(data: bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    return await asyncio.to_thread(decode_audio, data, sample_rate)  # ffmpeg runs in a subprocess: no GIL held


def _too_large(size: int | None, limit: int) -> PayloadTooLargeError:
    shown = f" of {size} bytes" if size is not None else ""
    return PayloadTooLargeError(f"Audio file{shown} exceeds the limit of {limit} bytes.", param="file")
