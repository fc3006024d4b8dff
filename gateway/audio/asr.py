"""How a speech request becomes an ASR pipeline call, and the pipeline's answer a Transcript.

Whisper takes its language and task as decoder-prompt tokens (`<|startoftranscript|><|zh|><|transcribe|>`):
transformers sets them from `generate_kwargs={"language": …, "task": …}`. Without them Whisper detects the
language from the first 30 s, and an English-only default elsewhere would transcribe a Chinese clip as English
(the walk-through's complaint) — so the request's `language`, else the entry's `parameters.language`, is
always handed to generate(). CTC models (wav2vec2) have no language, task or prompt: asking for one is a 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.audio.formats import Segment, Transcript, segments_from_chunks
from gateway.errors import InvalidRequestError, UnsupportedParameterError

WHISPER = "seq2seq_whisper"  # transformers' AutomaticSpeechRecognitionPipeline.type for Whisper models
WINDOW_SECONDS = 30.0  # Whisper's; longer audio is cut into windows (`chunk_length_s`) of the model's own length
TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class SpeechOptions:
    task: str = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    timestamps: bool = True  # segments for verbose_json / srt / vtt


def sampling_rate(pipeline: Any) -> int:
    extractor = getattr(pipeline, "feature_extractor", None)
    return int(getattr(extractor, "sampling_rate", 16_000) or 16_000)


def window_seconds(pipeline: Any) -> float:
    """The audio one forward pass sees (Whisper's feature extractor pads or cuts to 30 s)."""
    extractor = getattr(pipeline, "feature_extractor", None)
    return float(getattr(extractor, "chunk_length", None) or WINDOW_SECONDS)


def split_language(parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline call parameters, generate kwargs): `language` and `task` at the top level of an entry's or a
    request's parameters (the models file's `parameters: {language: zh}`) move into generate_kwargs."""
    params = dict(parameters)
    generate = dict(params.pop("generate_kwargs", None) or {})
    for key in ("language", "task"):
        if params.get(key) is not None:
            generate.setdefault(key, params.pop(key))
        params.pop(key, None)
    return params, generate


def call_kwargs(pipeline: Any, defaults: dict[str, Any], options: SpeechOptions, duration: float) -> dict[str, Any]:
    """Keyword arguments for `pipeline(audio, **kwargs)` serving an /v1/audio request."""
    params, generate = split_language(defaults)
    whisper = getattr(pipeline, "type", None) == WHISPER
    if not whisper:
        _refuse_for_ctc(options, explicit_language=options.language is not None)
        generate.pop("language", None)
        generate.pop("task", None)
    else:
        language = options.language or generate.get("language")
        generate.update(whisper_prompt(pipeline, language, options.task))
        if options.prompt:
            generate["prompt_ids"] = pipeline.tokenizer.get_prompt_ids(options.prompt, return_tensors="pt")
        if options.temperature > 0:
            generate.update(do_sample=True, temperature=options.temperature)
        if options.timestamps:
            params.update(return_timestamps=True, return_language=True)
    window = window_seconds(pipeline)
    if duration > window and "chunk_length_s" not in params:
        params["chunk_length_s"] = window
    if generate:
        params["generate_kwargs"] = generate
    return params


def inference_kwargs(pipeline: Any, defaults: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the Inference-API route: the entry's defaults and the request's `parameters`
    as the pipeline takes them, with `language` / `task` moved into generate_kwargs (and checked) for Whisper."""
    default_params, default_generate = split_language(defaults)
    request_params, request_generate = split_language(request)
    params = {**default_params, **request_params}
    generate = {**default_generate, **request_generate}
    if getattr(pipeline, "type", None) == WHISPER and (generate.get("language") or generate.get("task")):
        generate.update(whisper_prompt(pipeline, generate.get("language"), generate.get("task") or "transcribe"))
    if generate:
        params["generate_kwargs"] = generate
    return params


def whisper_prompt(pipeline: Any, language: str | None, task: str) -> dict[str, Any]:
    """generate_kwargs that set Whisper's decoder prompt: the language token (checked against the model's
    own list, so a typo is a 400 naming the choices, not a 500) and the task token."""
    config = pipeline.model.generation_config
    multilingual = bool(getattr(config, "is_multilingual", False)) and getattr(config, "lang_to_id", None)
    if task not in TASKS:
        raise InvalidRequestError(f"Unknown task {task!r}; use transcribe or translate.", param="task")
    if not multilingual:
        if task == "translate":
            raise UnsupportedParameterError("This model is English-only: it cannot translate.", param="model")
        if language and language_code(language) not in (None, "en"):
            raise UnsupportedParameterError(f"This model is English-only; language {language!r} cannot be set.")
        return {}
    kwargs: dict[str, Any] = {"task": task}
    if language:
        code = language_code(language)
        known = sorted(token.strip("<|>") for token in config.lang_to_id)
        if code is None or f"<|{code}|>" not in config.lang_to_id:
            raise InvalidRequestError(
                f"Unknown language {language[:40]!r}; this model knows: {', '.join(known)}.", param="language"
            )
        kwargs["language"] = code
    return kwargs


def language_code(language: str) -> str | None:
    """ISO-639-1 code from a code (`zh`), a name (`chinese`) or a token (`<|zh|>`), as Whisper accepts them."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    value = language.strip().lower().strip("<|>")
    if value in LANGUAGES:
        return value
    return TO_LANGUAGE_CODE.get(value)


def language_name(code: str | None) -> str | None:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code or "", code)


def _refuse_for_ctc(options: SpeechOptions, *, explicit_language: bool) -> None:
    what = "language" if explicit_language else "prompt" if options.prompt else None
    if options.task == "translate":
        raise UnsupportedParameterError("This speech model can only transcribe (it is not Whisper).", param="model")
    if what:
        raise UnsupportedParameterError(f"This speech model (not Whisper) takes no `{what}`.", param=what)


def transcript(
    pipeline: Any, output: dict[str, Any], options: SpeechOptions, *, duration: float, language: str | None
) -> Transcript:
    """The pipeline's `{"text", "chunks"}` as a Transcript; without chunks, one segment spans the audio."""
    text = str(output.get("text", ""))
    tokenizer = getattr(pipeline, "tokenizer", None)

    def tokenize(piece: str) -> list[int]:
        return list(tokenizer.encode(piece, add_special_tokens=False)) if tokenizer is not None else []

    chunks = output.get("chunks") or []
    segments = segments_from_chunks(chunks, duration, tokenize) if chunks else []
    if not segments and text.strip():
        segments = [Segment(start=0.0, end=duration, text=text, tokens=tokenize(text))]
    detected = next((chunk.get("language") for chunk in chunks if chunk.get("language")), None)
    if options.task == "translate":
        spoken = "english"  # what the text is in (OpenAI answers the same for translations)
    else:
        spoken = language_name(language) if language else detected
    return Transcript(
        text=text,
        duration=duration,
        task=options.task,
        language=spoken,
        segments=segments,
        temperature=options.temperature,
    )
