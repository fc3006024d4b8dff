"""A tiny random-weight Whisper directory that `pipeline("automatic-speech-recognition", model=dir)` loads
offline: WhisperForConditionalGeneration from a 2-layer config, a WhisperTokenizer made from the GPT-2 BPE
fixture plus Whisper's special tokens (what the English-only checkpoints use), a WhisperFeatureExtractor and
the generation_config fields Whisper's generate() reads (language/task ids, timestamp token).

Random weights say nothing sensible; tests compare the server's answer with the in-process pipeline's.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import tokenizer_fixture

# Whisper's token layout after the GPT-2 vocabulary (50257 entries, <|endoftext|> = 50256).
_CONTROL = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
TIMESTAMPS = 1501  # <|0.00|> … <|30.00|>, every 0.02 s
MAX_NEW_TOKENS = 12  # random weights rarely pick <|endoftext|>: bound every generation
# Whisper's window is 30 s; 10 s makes every encoder pass 3x cheaper, and a 25 s clip already long audio.
WINDOW_SECONDS = 10
# Wide random weights, so the decoder prompt (language, task tokens) visibly changes what the model says.
INIT_STD = 0.5


def build_tiny_whisper(target: Path) -> Path:
    import json

    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    gpt2 = tokenizer_fixture("gpt2")
    vocab = json.loads((gpt2 / "vocab.json").read_text(encoding="utf-8"))
    lines = (gpt2 / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]  # the first is a version header
    merges = [tuple(line.split()) for line in lines if line]
    languages = [f"<|{code}|>" for code in LANGUAGES]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMPS)]
    specials = ["<|startoftranscript|>", *languages, *_CONTROL]
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens(timestamps)  # Whisper keeps timestamps as plain added tokens (decode can skip them)
    tokenizer.pad_token = tokenizer.eos_token
    ids = tokenizer.convert_tokens_to_ids

    torch_seed()
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=WINDOW_SECONDS * 50,  # 100 mel frames a second, halved by the encoder's conv
        max_target_positions=448,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        pad_token_id=ids("<|endoftext|>"),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|endoftext|>"),
        init_std=INIT_STD,
    )
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        eos_token_id=ids("<|endoftext|>"),
        pad_token_id=ids("<|endoftext|>"),
        bos_token_id=ids("<|endoftext|>"),
        is_multilingual=True,
        lang_to_id={token: ids(token) for token in languages},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        # As the real checkpoints ship it: detect the language, then transcribe.
        forced_decoder_ids=[[1, None], [2, ids("<|transcribe|>")]],
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        begin_suppress_tokens=[],
        suppress_tokens=[],
        max_initial_timestamp_index=50,
        max_new_tokens=MAX_NEW_TOKENS,
        num_beams=1,  # the ASR pipeline's default is 5 beams (OpenAI's): greedy keeps tests fast
    )
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80, chunk_length=WINDOW_SECONDS), tokenizer=tokenizer
    )
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def torch_seed() -> None:
    import torch

    torch.manual_seed(0)
