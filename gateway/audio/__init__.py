"""Audio for the speech routes: decoding uploads to 16 kHz mono float32, and the transcript formats."""

from gateway.audio.decode import SAMPLE_RATE, AudioDecodeError, decode_audio

__all__ = ["SAMPLE_RATE", "AudioDecodeError", "decode_audio"]
