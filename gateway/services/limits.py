"""Bounds on a request's size, checked before anything expensive (tokenizing, rendering the template,
compiling a grammar): each bound is a setting, and going past it is a 400 `limit_exceeded` naming the
field, because retrying the same request can never succeed."""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import ContextLengthExceededError, LimitExceededError
from gateway.models import ServedModel
from gateway.schemas.chat import ChatCompletionRequest, ChatMessage
from gateway.schemas.completions import CompletionRequest
from gateway.settings import Settings


def check_capacity(served: ServedModel, sequences: int, *, param: str) -> None:
    """More sequences than the model can ever hold (running + queued) → 400, not the 429 of a full queue."""
    admission = getattr(served.engine, "admission", None)
    if admission is not None and sequences > admission.capacity:
        raise LimitExceededError(
            f"This request needs {sequences} sequences, which exceeds the limit of {admission.capacity} this "
            f"model can hold ({admission.max_running} running + {admission.max_queued} queued).",
            param=param,
        )


def prompt_count(prompt: str | list[Any]) -> int:
    """How many prompts a completions `prompt` holds (a string or a flat token list is one)."""
    if isinstance(prompt, str) or (prompt and all(isinstance(p, int) for p in prompt)):
        return 1
    return len(prompt)


def check_stop_lengths(stop: str | list[str] | None, settings: Settings) -> None:
    stops = [stop] if isinstance(stop, str) else stop or []
    longest = max((len(s) for s in stops), default=0)
    if longest > settings.max_stop_chars:
        raise LimitExceededError(
            f"A stop sequence of {longest} characters exceeds the limit of {settings.max_stop_chars}.", param="stop"
        )


def _prompt_chars(total: int, settings: Settings, param: str) -> None:
    if total > settings.max_prompt_chars:
        raise LimitExceededError(
            f"The prompt ({param}{' and tools' if param == 'messages' else ''}) has {total} characters, which "
            f"exceeds the limit of {settings.max_prompt_chars}.",
            param=param,
        )


def _message_chars(message: ChatMessage) -> int:
    content = message.content
    chars = len(content) if isinstance(content, str) else sum(len(p.text or "") for p in content or [])
    for call in message.tool_calls or []:
        arguments = call.function.arguments
        chars += len(arguments) if isinstance(arguments, str) else 0
    return chars


def schema_shape(schema: Any, settings: Settings, param: str, *, depth_only: bool = False) -> None:
    """Nesting depth, enum values, properties and size of a JSON schema, counted without recursion (a
    schema nested thousands deep must not overflow the stack before it is refused) and refused as soon
    as a count passes its bound (a 5 MB enum is not walked value by value). `depth_only` for JSON that
    is rendered into the prompt but never compiled."""
    enums = properties = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > settings.max_schema_depth:
            raise LimitExceededError(
                f"The {param} schema is nested deeper than the limit of {settings.max_schema_depth} levels.",
                param=param,
            )
        if isinstance(node, dict) and not depth_only:
            enums += len(node["enum"]) if isinstance(node.get("enum"), list) else 0
            properties += len(node["properties"]) if isinstance(node.get("properties"), dict) else 0
            if enums > settings.max_schema_enum:
                raise LimitExceededError(
                    f"The {param} schema has more than {settings.max_schema_enum} enum values, which exceeds "
                    "the limit.",
                    param=param,
                )
            if properties > settings.max_schema_properties:
                raise LimitExceededError(
                    f"The {param} schema has more than {settings.max_schema_properties} properties, which "
                    "exceeds the limit.",
                    param=param,
                )
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    if depth_only:
        return
    size = len(json.dumps(schema, separators=(",", ":")))  # after the depth check: json.dumps recurses
    if size > settings.max_schema_bytes:
        raise LimitExceededError(
            f"The {param} schema is {size} bytes, which exceeds the limit of {settings.max_schema_bytes}.",
            param=param,
        )


def _forced_tool_schemas(req: ChatCompletionRequest) -> list[Any] | None:
    """The tool parameter schemas that become a grammar: every tool's for "required", the named one's."""
    functions = [tool.get("function") for tool in req.tools or []]
    functions = [f for f in functions if isinstance(f, dict)]
    choice = req.tool_choice
    if choice == "required":
        return [f.get("parameters") for f in functions]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        return [f.get("parameters") for f in functions if f.get("name") == name]
    return None


def check_chat_limits(req: ChatCompletionRequest, settings: Settings) -> None:
    check_stop_lengths(req.stop, settings)
    tools_chars = 0
    if req.tools:
        if len(req.tools) > settings.max_tools:
            raise LimitExceededError(f"{len(req.tools)} tools exceed the limit of {settings.max_tools}.", param="tools")
        schema_shape(req.tools, settings, "tools", depth_only=True)
        forced = _forced_tool_schemas(req)
        if forced:
            schema_shape(forced, settings, "tools")
        tools_chars = len(json.dumps(req.tools))  # the template renders them into the prompt
    _prompt_chars(sum(_message_chars(m) for m in req.messages) + tools_chars, settings, "messages")
    if req.response_format:
        schema_shape(req.response_format, settings, "response_format")


def check_completion_limits(req: CompletionRequest, served: ServedModel, settings: Settings) -> None:
    check_stop_lengths(req.stop, settings)
    prompt = req.prompt
    texts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]
    _prompt_chars(sum(len(t) for t in texts), settings, "prompt")
    token_lists = [p for p in prompt if isinstance(p, list)] if isinstance(prompt, list) else []
    if not isinstance(prompt, str) and prompt_count(prompt) == 1 and prompt and isinstance(prompt[0], int):
        token_lists = [prompt]
    longest = max((len(ids) for ids in token_lists), default=0)
    if longest > served.context_length:  # known before decoding the ids back to text
        raise ContextLengthExceededError(
            f"This model's maximum context length is {served.context_length} tokens. However, your prompt "
            f"has {longest} tokens. Please reduce the length of the prompt.",
            param="prompt",
        )
