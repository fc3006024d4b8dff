"""Shared wire pieces: the lenient request base, usage, stream options.

Requests are lenient about unknown fields but not about types: a number sent as a string or a boolean
(`"max_tokens": "8"`, `"n": true`) and a boolean sent as anything else (`"stream": "yes"`) are refused,
as OpenAI refuses them; an integer where a float is expected, and an integral float where an integer
is expected, are accepted. An explicit `null` means the field's default.
"""

from __future__ import annotations

import json
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gateway.logsafe import printable_list

logger = logging.getLogger("gateway.requests")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _number(kind: str):
    def refuse_text_and_bool(value: Any) -> Any:
        if isinstance(value, (str, bool)):
            raise PydanticCustomError(
                f"{kind}_type",
                f"Input should be a valid {kind}, not a {'boolean' if isinstance(value, bool) else 'string'}",
            )
        return value

    return BeforeValidator(refuse_text_and_bool)


Int = Annotated[int, _number("integer")]
Float = Annotated[float, _number("number")]
# The check wraps the whole optional type, so a Field's ge/le still reach the OpenAPI schema as
# minimum/maximum (on `Int | None` pydantic would write them as unknown "ge"/"le" keys).
OptionalInt = Annotated[int | None, _number("integer")]
OptionalFloat = Annotated[float | None, _number("number")]
Bool = Annotated[bool, Strict()]


def _lone_surrogate_path(value: Any) -> str | None:
    """Where a string holds an unpaired UTF-16 surrogate (valid JSON `"\\ud800"`, but not text a
    tokenizer can encode); walked iteratively so no nesting depth can overflow the stack."""
    try:  # fast path, in C: one encode of the whole value (a 5 MB enum takes milliseconds, not seconds)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass  # somewhere in there: find where, for the message
    except (TypeError, ValueError, RecursionError):
        pass  # not plain JSON data (built in Python): walk it
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(item, dict):
            stack.extend((f"{path}.{key}", child) for key, child in item.items())
            stack.extend((f"{path}.<key>", key) for key in item if isinstance(key, str))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{path}.{i}", child) for i, child in enumerate(item))
    return None


def reject_lone_surrogates(value: Any, info: Any) -> Any:
    """A field validator's body: "\\ud800" is valid JSON but no tokenizer can encode it."""
    path = _lone_surrogate_path(value)
    if path is not None:
        raise PydanticCustomError(
            "unicode_surrogate",
            "Invalid text at '{where}': a lone UTF-16 surrogate (such as \\ud800) is not a character",
            {"where": f"{info.field_name}{path}"},
        )
    return value


def _system_fingerprint() -> str:
    """The server build, as llama.cpp reports its build: OpenAI's schema wants a string here, never null."""
    try:
        return f"gantry-{version('gantry-llm-gateway')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "gantry"


SYSTEM_FINGERPRINT = _system_fingerprint()


class OpenAIRequest(BaseModel):
    """Requests accept unknown fields (clients send many); they are logged, never a 422."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """`"max_tokens": null` is the default 16 on completions, not "no limit" (and so for n, stream, ...)."""
        if not isinstance(data, dict):
            return data
        defaults = {
            name for name, field in cls.model_fields.items() if field.get_default(call_default_factory=True) is not None
        }
        return {key: value for key, value in data.items() if not (value is None and key in defaults)}

    @field_validator("*", mode="before")
    @classmethod
    def _encodable_text(cls, value: Any, info: Any) -> Any:
        # One place for every text field of chat and completions (prompt, messages, stop, tools, ...).
        return reject_lone_surrogates(value, info)

    def log_ignored_fields(self) -> None:
        if self.model_extra:
            # Field names are client text: escaped and bounded, so a name cannot forge a log line.
            logger.info(
                "%s: ignoring unknown fields: %s", type(self).__name__, printable_list(sorted(self.model_extra))
            )


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(WireModel):
    include_usage: Bool | None = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class GenerationRequest(OpenAIRequest):
    """Fields chat and text completions share: sampling, stops, streaming, and the vLLM extras."""

    model: str | None = None
    temperature: OptionalFloat = Field(default=None, ge=0, le=2)
    top_p: OptionalFloat = Field(default=None, gt=0, le=1)
    n: OptionalInt = Field(default=1, ge=1, le=128)
    # int64 as in OpenAI's spec and vLLM; with n ≤ 128 every per-choice seed (seed + i) still fits
    # the [-2**63, 2**64 - 1] that torch.Generator.manual_seed accepts.
    seed: OptionalInt = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = Field(default=None, description="Up to max_stop_sequences strings; trimmed.")
    presence_penalty: OptionalFloat = Field(default=None, ge=-2, le=2)
    frequency_penalty: OptionalFloat = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Float] | None = None
    stream: Bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM-style extras users copy from vLLM examples.
    top_k: OptionalInt = Field(default=None, ge=-1)
    min_p: OptionalFloat = Field(default=None, ge=0, le=1)
    repetition_penalty: OptionalFloat = Field(default=None, gt=0)
    stop_token_ids: list[Int] | None = None
    ignore_eos: Bool | None = False
    skip_special_tokens: Bool | None = True
