"""/v1/audio/* through a real server and real clients: a tiny random-weight Whisper (GPT-2 BPE + Whisper's
special tokens) serves speech that espeak-ng synthesizes here. Random weights say nonsense, so every answer is
compared with what `transformers.pipeline("automatic-speech-recognition", model=…)` says in this process for
the same audio (decoded by transformers' own `ffmpeg_read`, not by the server's code)."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.integration.conftest import RunningServer, start_server, stop_server

ASR_MODEL = "tiny-whisper"
ZH_MODEL = "tiny-whisper-zh"  # the same weights with `parameters: {language: zh}` in its entry
RATE = 16_000

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None,
    reason="needs the Debian packages espeak-ng (synthesizes the test speech) and ffmpeg (decodes it)",
)


@dataclass
class Speech:
    server: RunningServer
    client: openai.OpenAI
    clip: Path  # "hello world" from espeak-ng, wav
    audio: np.ndarray  # the clip decoded in-process by transformers' ffmpeg_read
    reference: Any  # the in-process pipeline over the same model directory
    model_dir: Path

    def expected(self, audio: np.ndarray | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.reference(audio if audio is not None else self.audio, **kwargs)


def ffmpeg_read(data: bytes) -> np.ndarray:
    from transformers.pipelines.audio_utils import ffmpeg_read as read

    return read(data, RATE)


def synthesize(text: str, target: Path) -> Path:
    subprocess.run(["espeak-ng", "-w", str(target), text], check=True, capture_output=True, timeout=60)
    return target


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Speech]:
    import torch
    from transformers import pipeline

    from tests.audio.tiny_whisper import build_tiny_whisper

    root = tmp_path_factory.mktemp("speech")
    model_dir = build_tiny_whisper(root / "tiny-whisper")
    entry = f"kind: pipeline\n    task: automatic-speech-recognition\n    source: {model_dir}\n    device: cpu"
    models = root / "models.yaml"
    models.write_text(
        f"models:\n  - name: {ASR_MODEL}\n    {entry}\n    preload: true\n"
        f"  - name: {ZH_MODEL}\n    {entry}\n    parameters: {{language: zh}}\n",
        encoding="utf-8",
    )
    # One thread each: a tiny model gains nothing from two, and OpenMP's spinning threads cost CPU on a busy host.
    server = start_server(root, "--models-file", str(models), env={"OMP_NUM_THREADS": "1"})
    clip = synthesize("hello world", root / "clip.wav")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = pipeline("automatic-speech-recognition", model=str(model_dir), device="cpu")
        client = openai.OpenAI(
            base_url=server.base_url,
            api_key="none",
            max_retries=0,
            timeout=120,
            default_headers={"x-wait-for-model": "true"},  # the second entry loads on its first request
        )
        yield Speech(server, client, clip, ffmpeg_read(clip.read_bytes()), reference, model_dir)
    finally:
        torch.set_num_threads(threads)
        stop_server(server)


def transcribe(speech: Speech, **kwargs: Any) -> Any:
    kwargs.setdefault("model", ASR_MODEL)
    with speech.clip.open("rb") as clip:
        return speech.client.audio.transcriptions.create(file=clip, **kwargs)


def test_json_and_text_equal_the_in_process_pipeline(speech: Speech) -> None:
    expected = speech.expected()["text"]
    assert expected.strip(), "the tiny model says something"
    result = transcribe(speech)  # response_format json, the SDK's default
    assert result.text == expected
    assert result.usage is not None and result.usage.seconds == int(np.ceil(len(speech.audio) / RATE))
    text = transcribe(speech, response_format="text")
    assert isinstance(text, str) and text.strip() == expected.strip()


def test_verbose_json_has_the_pipelines_timed_segments(speech: Speech) -> None:
    expected = speech.expected(return_timestamps=True, return_language=True)
    result = transcribe(speech, response_format="verbose_json", timestamp_granularities=["segment"])
    assert result.text == expected["text"]
    assert [s.text for s in result.segments] == [c["text"] for c in expected["chunks"]]
    assert result.segments[0].start == pytest.approx(expected["chunks"][0]["timestamp"][0], abs=1e-3)
    assert all(0 <= s.start <= s.end for s in result.segments)
    assert result.duration == pytest.approx(len(speech.audio) / RATE, abs=0.01)
    assert result.language == expected["chunks"][0]["language"]  # detected: no language was asked for
    assert result.task == "transcribe"


def test_srt_and_vtt_parse_into_the_segments(speech: Speech) -> None:
    import srt
    import webvtt

    chunks = [c for c in speech.expected(return_timestamps=True)["chunks"] if c["text"].strip()]
    subtitles = list(srt.parse(transcribe(speech, response_format="srt")))
    assert [s.content for s in subtitles] == [c["text"].strip() for c in chunks]
    assert subtitles[0].start.total_seconds() == pytest.approx(chunks[0]["timestamp"][0], abs=1e-3)
    assert all(s.start <= s.end for s in subtitles)
    captions = webvtt.from_buffer(io.StringIO(transcribe(speech, response_format="vtt"))).captions
    assert [c.text for c in captions] == [c["text"].strip() for c in chunks]
    assert [c.start for c in captions] == [str(s.start)[:-3].rjust(12, "0") for s in subtitles] or all(
        c.start_in_seconds == int(s.start.total_seconds()) for c, s in zip(captions, subtitles, strict=True)
    )


def test_language_sets_whisper_decoder_prompt(speech: Speech) -> None:
    from gateway.audio.asr import SpeechOptions, call_kwargs

    zh = speech.expected(generate_kwargs={"language": "zh", "task": "transcribe"})["text"]
    en = speech.expected(generate_kwargs={"language": "en", "task": "transcribe"})["text"]
    assert zh != en, "the tiny model's output depends on its language token"
    assert transcribe(speech, language="zh").text == zh
    assert transcribe(speech, language="en").text == en
    verbose = transcribe(speech, language="zh", response_format="verbose_json")
    assert verbose.language == "chinese"
    # The entry's default (`parameters: {language: zh}`) applies when the request names none.
    assert transcribe(speech, model=ZH_MODEL).text == zh
    assert transcribe(speech, model=ZH_MODEL, language="en").text == en  # the request wins
    # What the server hands generate(): the language and task tokens of the decoder prompt.
    kwargs = call_kwargs(speech.reference, {"language": "zh"}, SpeechOptions(), duration=1.0)
    assert kwargs["generate_kwargs"] == {"language": "zh", "task": "transcribe"}
    with pytest.raises(openai.BadRequestError) as refused:
        transcribe(speech, language="klingon")
    assert refused.value.body["param"] == "language"


def test_translation_uses_the_translate_task(speech: Speech) -> None:
    expected = speech.expected(generate_kwargs={"task": "translate"})["text"]
    assert expected != speech.expected(generate_kwargs={"task": "transcribe"})["text"]
    with speech.clip.open("rb") as clip:
        result = speech.client.audio.translations.create(model=ASR_MODEL, file=clip)
    assert result.text == expected


def test_prompt_and_temperature(speech: Speech) -> None:
    prompt_ids = speech.reference.tokenizer.get_prompt_ids("Gantry speech", return_tensors="pt")
    with_prompt = speech.expected(generate_kwargs={"task": "transcribe", "prompt_ids": prompt_ids})["text"]
    assert with_prompt != speech.expected()["text"], "the prompt changes what the tiny model says"
    assert transcribe(speech, prompt="Gantry speech").text == with_prompt
    sampled = transcribe(speech, temperature=0.9, response_format="verbose_json")
    assert sampled.segments and all(s.temperature == 0.9 for s in sampled.segments)


@pytest.mark.parametrize("suffix", ["flac", "mp3", "ogg", "webm"])
def test_other_containers_decode(speech: Speech, suffix: str) -> None:
    encoded = speech.clip.with_suffix(f".{suffix}")
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(speech.clip), str(encoded)], check=True)
    expected = speech.expected(ffmpeg_read(encoded.read_bytes()))["text"]
    with encoded.open("rb") as clip:
        assert speech.client.audio.transcriptions.create(model=ASR_MODEL, file=clip).text == expected


def test_long_audio_is_chunked(speech: Speech, tmp_path: Path) -> None:
    window = speech.reference.feature_extractor.chunk_length  # seconds one forward pass sees
    repeats = int(window * 1.6 / (len(speech.audio) / RATE)) + 1
    long_clip = tmp_path / "long.wav"
    loop = ["ffmpeg", "-y", "-loglevel", "error", "-stream_loop", str(repeats - 1), "-i", str(speech.clip)]
    subprocess.run([*loop, str(long_clip)], check=True)
    audio = ffmpeg_read(long_clip.read_bytes())
    assert len(audio) / RATE > window
    expected = speech.expected(audio, chunk_length_s=window)["text"]
    with long_clip.open("rb") as clip:
        result = speech.client.audio.transcriptions.create(model=ASR_MODEL, file=clip)
    assert result.text == expected


def test_bad_uploads_get_4xx_and_the_server_stays_healthy(speech: Speech, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.wav"
    text_file.write_text("This is a text file, not audio.\n" * 20, encoding="utf-8")
    with text_file.open("rb") as upload, pytest.raises(openai.BadRequestError) as bad:
        speech.client.audio.transcriptions.create(model=ASR_MODEL, file=upload)
    assert bad.value.body["code"] == "invalid_audio"
    # 30 MB: over the 25 MB limit, refused from Content-Length before the body is read.
    big = tmp_path / "big.wav"
    big.write_bytes(speech.clip.read_bytes() + b"\0" * (30 << 20))
    with big.open("rb") as upload, pytest.raises(openai.APIStatusError) as too_large:
        speech.client.audio.transcriptions.create(model=ASR_MODEL, file=upload)
    assert too_large.value.status_code == 413
    assert too_large.value.body["code"] == "request_too_large"
    url = f"{speech.server.base_url}/audio/transcriptions"
    for data, files, status in [
        ({}, {"model": (None, ASR_MODEL)}, 400),  # multipart without a file
        ({"model": ASR_MODEL, "response_format": "docx"}, {"file": ("a.wav", speech.clip.read_bytes())}, 400),
        ({"model": "no-such-model"}, {"file": ("a.wav", speech.clip.read_bytes())}, 404),
        ({"model": ASR_MODEL}, {"file": ("empty.wav", b"")}, 400),
    ]:
        r = httpx.post(url, data=data, files=files, timeout=60)
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]
    r = httpx.post(url, content=b"\x00" * 100, headers={"content-type": "text/plain"}, timeout=60)
    assert r.status_code == 415
    assert httpx.get(f"{speech.server.url}/health", timeout=10).status_code == 200
    assert transcribe(speech).text == speech.expected()["text"]


@pytest.mark.usefixtures("hub_client_reaches_localhost")
def test_inference_client_automatic_speech_recognition(speech: Speech) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{speech.server.url}/models/{ASR_MODEL}", timeout=120)
    # The path of a .wav: huggingface_hub posts the raw bytes with Content-Type audio/x-wav.
    assert client.automatic_speech_recognition(speech.clip).text == speech.expected()["text"]
    # With parameters it posts JSON instead: base64 `inputs` and `parameters` (language → Whisper's prompt).
    zh = speech.expected(generate_kwargs={"language": "zh", "task": "transcribe"})["text"]
    assert client.automatic_speech_recognition(speech.clip, extra_body={"language": "zh"}).text == zh
    waits = {"x-wait-for-model": "true"}  # the entry may still be loading: wait rather than get its 503
    zh_entry = InferenceClient(model=f"{speech.server.url}/models/{ZH_MODEL}", timeout=120, headers=waits)
    assert zh_entry.automatic_speech_recognition(speech.clip).text == zh  # the entry's default language


def test_inference_api_bad_audio_gets_its_error_shape(speech: Speech) -> None:
    url = f"{speech.server.url}/models/{ASR_MODEL}"
    r = httpx.post(url, content=b"plain text, not audio\n" * 10, headers={"content-type": "audio/wav"}, timeout=60)
    assert r.status_code == 400 and isinstance(r.json()["error"], str), r.text
    r = httpx.post(url, content=b"\0" * (30 << 20), headers={"content-type": "audio/wav"}, timeout=60)
    assert r.status_code == 413 and isinstance(r.json()["error"], str), r.text
    r = httpx.post(url, json={"inputs": "not base64 audio!"}, timeout=60)
    assert r.status_code == 400 and isinstance(r.json()["error"], str), r.text
    assert httpx.get(f"{speech.server.url}/health", timeout=10).status_code == 200
