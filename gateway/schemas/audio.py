"""OpenAI speech-to-text wire shapes: the multipart form of /v1/audio/transcriptions and /translations, and
the JSON answers (`json`, `verbose_json`); `text`, `srt` and `vtt` answer plain text."""

from __future__ import annotations

from typing import Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class TranscriptionForm(BaseModel):
    """The multipart fields the openai SDK sends; unknown fields are ignored (newer SDK options)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    file: UploadFile = Field(description="The audio: wav, flac, mp3, ogg/opus, webm, m4a (anything ffmpeg reads).")
    model: str = Field(description="An automatic-speech-recognition model served here.")
    language: str | None = Field(
        default=None,
        max_length=32,
        description="The spoken language, ISO-639-1 (`zh`, `en`, …): forces Whisper's language token instead of "
        "detection. Default: the model entry's `parameters.language`, else detected. On /translations: the "
        "source language.",
    )
    prompt: str | None = Field(
        default=None, max_length=4000, description="Text the model continues from (Whisper's previous-text prompt)."
    )
    response_format: ResponseFormat = Field(default="json", description="json, text, srt, vtt or verbose_json.")
    temperature: float = Field(default=0.0, ge=0, le=1, description="0 = greedy decoding; above 0 samples.")
    timestamp_granularities: list[Literal["segment", "word"]] | None = Field(
        default=None,
        alias="timestamp_granularities[]",
        description="`segment` (always given with verbose_json); `word` is not supported.",
    )
    stream: bool | None = Field(default=None, description="Streaming is not supported: only false/absent.")


class TranscriptionUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: int = Field(description="Seconds of audio, rounded up.")


class Transcription(BaseModel):
    """`response_format=json`."""

    text: str
    usage: TranscriptionUsage


class TranscriptionSegment(BaseModel):
    id: int
    seek: int
    start: float = Field(description="Seconds from the start of the audio.")
    end: float
    text: str
    tokens: list[int]
    temperature: float


class TranscriptionVerbose(BaseModel):
    """`response_format=verbose_json`: timed segments, the language and the duration."""

    task: Literal["transcribe", "translate"]
    language: str | None = Field(description="The spoken language's English name (`english`), when known.")
    duration: float = Field(description="Seconds of audio.")
    text: str
    segments: list[TranscriptionSegment]
    usage: TranscriptionUsage
