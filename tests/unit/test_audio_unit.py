"""Speech pieces without a model: decoding, the transcript formats, the body rules, language parameters."""

from __future__ import annotations

import io
import math
import shutil
import wave
from types import SimpleNamespace

import numpy as np
import pytest
from starlette.datastructures import Headers

from gateway.audio import asr
from gateway.audio.body import SPEECH_PREFIX, audio_body_rules
from gateway.audio.decode import AudioDecodeError, _soundfile, decode_audio
from gateway.audio.formats import Segment, Transcript, render, segments_from_chunks
from gateway.errors import InvalidRequestError, UnsupportedParameterError
from gateway.middleware import matching_rule


def tone_wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * math.pi * 440 * t) * 0.5 * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("decoder", ["ffmpeg", "soundfile"])
def test_decoding_resamples_to_16_khz_mono(decoder: str) -> None:
    if decoder == "ffmpeg" and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg (Debian package) is not installed")
    data = tone_wav(0.5, 8000)
    samples = decode_audio(data) if decoder == "ffmpeg" else _soundfile(data, 16_000)
    assert samples.dtype == np.float32
    assert abs(len(samples) - 8000) <= 16  # 0.5 s at 16 kHz
    assert 0.4 < float(np.abs(samples).max()) < 0.6


@pytest.mark.parametrize("data", [b"", b"not audio at all\n" * 50, b"RIFF\x00\x00\x00\x00WAVEfmt "])
def test_undecodable_bytes_are_400(data: bytes) -> None:
    with pytest.raises(AudioDecodeError) as refused:
        decode_audio(data)
    assert refused.value.status_code == 400 and refused.value.param == "file"
    assert "/tmp" not in refused.value.message  # no server path in the message


def transcript(segments: list[Segment], text: str = " hello world") -> Transcript:
    return Transcript(text=text, duration=2.5, task="transcribe", language="english", segments=segments)


def test_srt_and_vtt_cues() -> None:
    segments = [Segment(0.0, 1.234, " hello"), Segment(1.234, 3661.5, " world -->\n\nagain"), Segment(4, 5, "  ")]
    srt = render(transcript(segments), "srt")
    assert srt == "1\n00:00:00,000 --> 00:00:01,234\nhello\n\n2\n00:00:01,234 --> 01:01:01,500\nworld ->\nagain\n"
    vtt = render(transcript(segments), "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.234\nhello\n\n")
    assert "01:01:01.500" in vtt and "-->\n" not in vtt.split("\n", 4)[-1].replace(" --> ", "")


def test_json_formats() -> None:
    t = transcript([Segment(0.0, 2.5, " hello world", [1, 2])])
    assert render(t, "json") == {"text": " hello world", "usage": {"type": "duration", "seconds": 3}}
    assert render(t, "text") == "hello world\n"
    verbose = render(t, "verbose_json")
    assert verbose["language"] == "english" and verbose["duration"] == 2.5
    assert verbose["segments"] == [
        {"id": 0, "seek": 0, "start": 0.0, "end": 2.5, "text": " hello world", "tokens": [1, 2], "temperature": 0.0}
    ]


def test_segments_from_pipeline_chunks() -> None:
    chunks = [
        {"timestamp": (0.5, None), "text": " a"},  # open end mid-audio: ends with the audio
        {"timestamp": (None, 1.0), "text": " b"},  # no start: where the last one ended; never before it starts
        {"timestamp": (2.0, 1.5), "text": " c"},  # random weights may close before they open
    ]
    segments = segments_from_chunks(chunks, duration=3.0)
    assert [(s.start, s.end) for s in segments] == [(0.5, 3.0), (3.0, 3.0), (2.0, 2.0)]


def test_body_rules_pick_audio_requests_only() -> None:
    rules = audio_body_rules(25 << 20)

    def rule(path: str, content_type: str):
        return matching_rule(rules, {"path": path}, Headers({"content-type": content_type}))

    assert rule(f"{SPEECH_PREFIX}transcriptions", "multipart/form-data; boundary=x").max_bytes > 25 << 20
    assert rule("/models/whisper", "audio/x-wav").max_bytes == 25 << 20
    assert rule("/models/whisper", "video/webm") is not None
    assert rule("/models/whisper", "application/json") is None  # JSON keeps the ordinary limit
    assert rule("/v1/chat/completions", "audio/wav") is None
    assert rule("/v1/chat/completions", "multipart/form-data") is None


def fake_whisper(multilingual: bool = True) -> SimpleNamespace:
    config = SimpleNamespace(is_multilingual=multilingual, lang_to_id={"<|en|>": 1, "<|zh|>": 2})
    return SimpleNamespace(type=asr.WHISPER, model=SimpleNamespace(generation_config=config), feature_extractor=None)


def test_language_becomes_whisper_generate_kwargs() -> None:
    whisper = fake_whisper()
    options = asr.SpeechOptions(language="Chinese", timestamps=False)
    assert asr.call_kwargs(whisper, {}, options, 1.0) == {"generate_kwargs": {"language": "zh", "task": "transcribe"}}
    # the entry's default language, under the request's; its other parameters pass through
    defaults = {"language": "zh", "max_new_tokens": 9}
    kwargs = asr.call_kwargs(whisper, defaults, asr.SpeechOptions(task="translate"), 1.0)
    assert kwargs["generate_kwargs"] == {"language": "zh", "task": "translate"}
    assert kwargs["max_new_tokens"] == 9 and kwargs["return_timestamps"] is True
    assert asr.call_kwargs(whisper, {}, asr.SpeechOptions(), 95.0)["chunk_length_s"] == 30.0
    inference = asr.inference_kwargs(whisper, {"language": "zh"}, {"language": "en", "return_timestamps": True})
    assert inference == {"return_timestamps": True, "generate_kwargs": {"language": "en", "task": "transcribe"}}
    with pytest.raises(InvalidRequestError, match="Unknown language"):
        asr.call_kwargs(whisper, {}, asr.SpeechOptions(language="fr"), 1.0)  # not in this model's list


def test_models_without_languages_refuse_them() -> None:
    english_only = fake_whisper(multilingual=False)
    with pytest.raises(UnsupportedParameterError):
        asr.call_kwargs(english_only, {}, asr.SpeechOptions(task="translate"), 1.0)
    assert "generate_kwargs" not in asr.call_kwargs(english_only, {}, asr.SpeechOptions(language="en"), 1.0)
    ctc = SimpleNamespace(type="ctc", feature_extractor=None)
    with pytest.raises(UnsupportedParameterError):
        asr.call_kwargs(ctc, {}, asr.SpeechOptions(language="en"), 1.0)
    assert asr.call_kwargs(ctc, {"language": "en"}, asr.SpeechOptions(), 1.0) == {}  # an entry default is moot
