"""Map OpenAI request fields to internal SamplingParams, with the context-window checks."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.engine.types import SamplingParams
from gateway.errors import ContextLengthExceededError, InvalidRequestError
from gateway.models import ServedModel

# Below this a temperature is greedy (vLLM's _SAMPLING_EPS): dividing logits by 1e-300 overflows to
# inf/nan and samples garbage instead of the argmax the client asked for.
SAMPLING_EPS = 1e-5


@dataclass(frozen=True)
class SamplingFields:
    """The sampling-related request fields shared by chat and completions."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = False
    skip_special_tokens: bool | None = True

    @classmethod
    def of(cls, request: object) -> SamplingFields:
        return cls(**{name: getattr(request, name) for name in cls.__dataclass_fields__})


def budget(prompt_tokens: int, requested: int | None, served: ServedModel, *, noun: str) -> int:
    """max_new_tokens for a prompt: the request's value if it fits; without one the model's default
    cap (`ServedModel.default_max_tokens`), shortened to the rest of the window."""
    context = served.context_length
    default_cap = served.default_max_tokens
    if requested is None:
        remaining = context - prompt_tokens
        if remaining <= 0:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context} tokens. However, your {noun} resulted "
                f"in {prompt_tokens} tokens. Please reduce the length of the {noun}.",
                param="messages" if noun == "messages" else "prompt",
            )
        return min(remaining, default_cap) if default_cap else remaining
    if prompt_tokens + requested > context:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {noun}, {requested} in the "
            f"completion). Please reduce the length of the {noun} or completion.",
            param="max_tokens",
        )
    return requested


# A normalizer may turn one character into two (NFKC: "ﬁ" → "fi"): the bound below allows for that.
NORMALIZER_MARGIN = 2


def max_token_chars(served: ServedModel) -> int:
    """Characters of the longest token in the vocabulary (computed once per model)."""
    if served.max_token_chars is None:
        vocab = served.pipeline.tokenizer.get_vocab()
        served.max_token_chars = max((len(token) for token in vocab), default=1)
    return served.max_token_chars


def check_text_fits(text_chars: int, served: ServedModel, *, noun: str) -> None:
    """400 before tokenizing a text that cannot fit the context window whatever its tokens: no token
    covers more than max_token_chars characters, so it needs at least chars / that many tokens. A 10 MB
    prompt is refused at once instead of after seconds of tokenizing."""
    at_least = text_chars // (max_token_chars(served) * NORMALIZER_MARGIN)
    if at_least > served.context_length:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {served.context_length} tokens. However, your {noun} "
            f"({text_chars} characters) would need at least {at_least} tokens. Please reduce the length of the "
            f"{noun}.",
            param="messages" if noun == "messages" else "prompt",
        )


def _token_id(raw: str | int, served: ServedModel, param: str) -> int:
    try:
        token_id = int(raw)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"Invalid token id {raw!r} in {param}.", param=param) from None
    if not 0 <= token_id < served.vocab_size:
        raise InvalidRequestError(
            f"Token id {token_id} in {param} is out of range for this model (vocabulary size {served.vocab_size}).",
            param=param,
        )
    return token_id


def resolve_token_fields(
    fields: SamplingFields, served: ServedModel
) -> tuple[tuple[tuple[int, float], ...], frozenset[int]]:
    """logit_bias and stop_token_ids as token ids, or a 400 naming the field. The services call it while
    preparing a request, so a bad id is a 400 before a stream starts, not an error event after it."""
    bias = []
    for raw, value in (fields.logit_bias or {}).items():
        if not -100 <= value <= 100:
            raise InvalidRequestError("logit_bias values must be between -100 and 100.", param="logit_bias")
        bias.append((_token_id(raw, served, "logit_bias"), float(value)))
    extra_stops = frozenset(_token_id(t, served, "stop_token_ids") for t in fields.stop_token_ids or [])
    return tuple(bias), extra_stops


def sampling_params(
    fields: SamplingFields,
    served: ServedModel,
    *,
    max_new_tokens: int,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    seed_offset: int = 0,
    logits_processors: tuple = (),
    keep_special_tokens: bool = False,
    constrained: bool = False,
) -> SamplingParams:
    """Request values win; unset ones fall back to the model's generation_config, then OpenAI defaults."""
    defaults = served.sampling_defaults

    def pick(value, key: str, fallback):
        return value if value is not None else defaults.get(key, fallback)

    bias, extra_stops = resolve_token_fields(fields, served)
    eos = frozenset() if fields.ignore_eos else served.pipeline.stop_token_ids
    seed = None if fields.seed is None else fields.seed + seed_offset
    temperature = float(pick(fields.temperature, "temperature", 1.0))
    # A grammar-constrained output repeats its syntax (`"`, `,`, `}`) by design: the model's default repetition
    # penalty pushes it toward odd tokens and long strings that miss the budget (seen: strict json_schema
    # answers cut by `length`). There only the request's own value applies.
    repetition = fields.repetition_penalty
    if repetition is None:
        repetition = 1.0 if constrained else defaults.get("repetition_penalty", 1.0)
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=0.0 if temperature < SAMPLING_EPS else temperature,
        top_p=float(pick(fields.top_p, "top_p", 1.0)),
        top_k=int(pick(fields.top_k, "top_k", 0)),
        min_p=float(pick(fields.min_p, "min_p", 0.0)),
        seed=seed,
        presence_penalty=fields.presence_penalty or 0.0,
        frequency_penalty=fields.frequency_penalty or 0.0,
        repetition_penalty=float(repetition),
        logit_bias=bias,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        stop_token_ids=frozenset(eos | extra_stops),
        skip_special_tokens=fields.skip_special_tokens is not False and not keep_special_tokens,
        logits_processors=logits_processors,
    )
