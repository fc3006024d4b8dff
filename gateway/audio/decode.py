"""Any upload (wav, flac, mp3, ogg/opus, webm, m4a, ...) → 16 kHz mono float32 samples, what ASR models take.

ffmpeg (the Debian package) decodes every container and codec and resamples in one call. The upload is
written to a temporary file rather than piped (transformers' `ffmpeg_read` pipes it): MP4/M4A files that keep
their index at the end cannot be read from a pipe, and a file lets us bound ffmpeg's time. Without ffmpeg,
soundfile (libsndfile, bundled in its wheel) still reads wav/flac/ogg; mp3/webm then need ffmpeg.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile

import numpy as np

from gateway.errors import InvalidRequestError

SAMPLE_RATE = 16_000
DECODE_TIMEOUT_SECONDS = 120.0  # a 25 MB file decodes in a few seconds; a pathological one must not hang a thread


class AudioDecodeError(InvalidRequestError):
    """The upload is not audio we can decode (400)."""

    default_code = "invalid_audio"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="file")


def decode_audio(data: bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at `sample_rate`. Blocking (runs ffmpeg): call it off the event loop."""
    if not data:
        raise AudioDecodeError("The audio file is empty.")
    ffmpeg = shutil.which("ffmpeg")
    samples = _ffmpeg(ffmpeg, data, sample_rate) if ffmpeg else _soundfile(data, sample_rate)
    if samples.size == 0:
        raise AudioDecodeError("The file holds no audio samples.")
    return samples


def _ffmpeg(ffmpeg: str, data: bytes, sample_rate: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(prefix="gantry-audio-") as upload:
        upload.write(data)
        upload.flush()
        command = [
            ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", upload.name,
            "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1",
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, timeout=DECODE_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AudioDecodeError(f"Decoding the audio took over {DECODE_TIMEOUT_SECONDS:.0f} s.") from exc
        if done.returncode != 0 or not done.stdout:
            reason = _last_line(done.stderr, upload.name) or "no audio stream"
            raise AudioDecodeError(f"The file could not be decoded as audio ({reason}).")
    return np.frombuffer(done.stdout, dtype=np.float32).copy()


def _soundfile(data: bytes, sample_rate: int) -> np.ndarray:
    try:
        import soundfile
    except ImportError as exc:  # neither decoder: a server setup problem, reported to the client as 400 anyway
        raise AudioDecodeError("No audio decoder is installed on the server (install ffmpeg).") from exc
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError(
            "The file could not be decoded as audio (this server has no ffmpeg: only wav/flac/ogg are read)."
        ) from exc
    return _resample(samples.mean(axis=1), rate, sample_rate)


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target or samples.size == 0:
        return samples.astype(np.float32)
    from scipy.signal import resample_poly  # scipy ships with transformers' audio extras; only this path needs it

    divisor = np.gcd(rate, target)
    return resample_poly(samples, target // divisor, rate // divisor).astype(np.float32)


def _last_line(stderr: bytes, path: str) -> str:
    """ffmpeg's last complaint, without the server's temporary path."""
    text = stderr.decode("utf-8", "replace").strip()
    line = text.splitlines()[-1] if text else ""
    return line.replace(f"{path}: ", "").replace(path, "the upload").strip()[:200]
