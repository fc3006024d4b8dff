"""/v1/audio/transcriptions and /translations: an upload → an ASR pipeline entry → the requested format."""

from __future__ import annotations

from typing import Any

from gateway.accounting import count_tokens
from gateway.audio import asr
from gateway.audio.body import decode_off_loop, read_upload
from gateway.audio.formats import Transcript, render
from gateway.errors import InvalidRequestError, UnsupportedParameterError
from gateway.pipelines import ASR, PipelineInputError
from gateway.pipelines.jsonable import to_jsonable
from gateway.registry import ModelRegistry
from gateway.schemas.audio import TranscriptionForm
from gateway.settings import Settings


class AudioService:
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    async def transcribe(self, form: TranscriptionForm, task: str, *, wait: bool) -> dict[str, Any] | str:
        """The transcript (task `transcribe`) or its English translation (`translate`) in form.response_format:
        a JSON-able dict for json/verbose_json, text for text/srt/vtt."""
        _check_options(form)
        data = await read_upload(form.file, self.settings.max_audio_bytes)  # 413 before a model is touched
        async with await self.registry.acquire(form.model, ASR, wait=wait) as lease:
            handle = lease.served
            pipeline = handle.pipeline
            rate = asr.sampling_rate(pipeline)
            audio = await decode_off_loop(data, rate)
            duration = len(audio) / rate
            options = asr.SpeechOptions(
                task=task,
                language=form.language or None,
                prompt=form.prompt or None,
                temperature=form.temperature,
                timestamps=form.response_format in ("verbose_json", "srt", "vtt"),
            )
            kwargs = asr.call_kwargs(pipeline, handle.call_defaults, options, duration)
            try:
                output = await handle.call(audio, **kwargs)
            except PipelineInputError as exc:
                raise InvalidRequestError(str(exc)) from exc
            language = kwargs.get("generate_kwargs", {}).get("language")
            transcript = asr.transcript(pipeline, output, options, duration=duration, language=language)
        count_tokens(0, _token_count(transcript))
        return render(transcript, form.response_format)


async def infer_speech(handle: Any, data: bytes, parameters: dict[str, Any]) -> Any:
    """An ASR entry on the Inference-API route: what `pipeline(audio, **parameters)` returns, with the entry's
    defaults under the request's parameters and Whisper's `language` / `task` made generate() arguments."""
    pipeline = handle.pipeline
    audio = await decode_off_loop(data, asr.sampling_rate(pipeline))
    kwargs = asr.inference_kwargs(pipeline, handle.call_defaults, parameters)
    try:
        output = await handle.call(audio, **kwargs)
    except PipelineInputError as exc:
        raise InvalidRequestError(str(exc), param="parameters") from exc
    text = output.get("text", "") if isinstance(output, dict) else ""
    tokenizer = getattr(pipeline, "tokenizer", None)
    count_tokens(0, len(tokenizer.encode(text, add_special_tokens=False)) if tokenizer and text else 0)
    return to_jsonable(output)


def _check_options(form: TranscriptionForm) -> None:
    if form.stream:
        raise UnsupportedParameterError("Streaming transcriptions are not supported; omit `stream`.", param="stream")
    if form.timestamp_granularities and "word" in form.timestamp_granularities:
        raise UnsupportedParameterError(
            "Word timestamps are not supported; `segment` timestamps come with verbose_json.",
            param="timestamp_granularities[]",
        )
    if form.timestamp_granularities and form.response_format != "verbose_json":
        raise InvalidRequestError(
            "timestamp_granularities[] needs response_format=verbose_json.", param="timestamp_granularities[]"
        )


def _token_count(transcript: Transcript) -> int:
    return sum(len(segment.tokens) for segment in transcript.segments)
