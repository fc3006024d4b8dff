"""A transcript (text, timed segments, language, duration) in the five OpenAI `response_format`s.

SRT and WebVTT are written here: each is a handful of lines per cue, and the subtitle libraries would add a
dependency for string formatting. Tests parse the output with independent parsers (`srt`, `webvtt-py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Transcript:
    text: str
    duration: float  # seconds of audio
    task: str  # transcribe | translate
    language: str | None  # the language's English name (OpenAI's "english"), None when unknown
    segments: list[Segment]
    temperature: float = 0.0


def segments_from_chunks(chunks: list[dict[str, Any]], duration: float, tokenize=None) -> list[Segment]:
    """The ASR pipeline's `return_timestamps=True` chunks → segments. The last chunk's end is None when the
    model stopped before closing it (the audio ran out): it ends with the audio."""
    segments = []
    for chunk in chunks:
        start, end = chunk.get("timestamp") or (None, None)
        start = float(start) if start is not None else (segments[-1].end if segments else 0.0)
        end = max(float(end), start) if end is not None else max(start, duration)  # a cue never ends before it starts
        text = str(chunk.get("text", ""))
        segments.append(Segment(start=start, end=end, text=text, tokens=tokenize(text) if tokenize else []))
    return segments


def usage(transcript: Transcript) -> dict[str, Any]:
    """OpenAI bills whisper-1 by audio seconds, rounded up: `{"type": "duration", "seconds": N}`."""
    return {"type": "duration", "seconds": math.ceil(transcript.duration)}


def render(transcript: Transcript, response_format: str) -> dict[str, Any] | str:
    """A JSON-able dict for json/verbose_json, the body text for text/srt/vtt."""
    if response_format == "json":
        return {"text": transcript.text, "usage": usage(transcript)}
    if response_format == "verbose_json":
        return verbose_json(transcript)
    if response_format == "text":
        return transcript.text.strip() + "\n"
    if response_format == "srt":
        return srt(transcript.segments)
    if response_format == "vtt":
        return vtt(transcript.segments)
    raise ValueError(f"unknown response_format {response_format!r}")


def verbose_json(transcript: Transcript) -> dict[str, Any]:
    return {
        "task": transcript.task,
        "language": transcript.language,
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": [
            {
                "id": index,
                "seek": 0,
                "start": round(segment.start, 3),
                "end": round(segment.end, 3),
                "text": segment.text,
                "tokens": segment.tokens,
                "temperature": transcript.temperature,
            }
            for index, segment in enumerate(transcript.segments)
        ],
        "usage": usage(transcript),
    }


def srt(segments: list[Segment]) -> str:
    cues = [
        f"{number}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{_cue_text(s.text)}\n"
        for number, s in enumerate(_spoken(segments), start=1)
    ]
    return "\n".join(cues)


def vtt(segments: list[Segment]) -> str:
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{_cue_text(s.text)}\n" for s in _spoken(segments)]
    return "WEBVTT\n\n" + "\n".join(cues)


def _clock(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _spoken(segments: list[Segment]) -> list[Segment]:
    return [segment for segment in segments if segment.text.strip()]  # a cue needs a line of text


def _cue_text(text: str) -> str:
    """One cue's text: no blank line inside (it would end the cue) and no `-->` (a WebVTT cue line holding
    it reads as a timing line)."""
    lines = [line.strip() for line in text.replace("-->", "->").splitlines() if line.strip()]
    return "\n".join(lines)
