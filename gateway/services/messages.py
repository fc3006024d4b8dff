"""OpenAI chat messages → the plain dicts chat templates expect."""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import InvalidRequestError
from gateway.schemas.chat import ChatMessage


def _flatten_content(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InvalidRequestError(
                f"Content parts of type {part.type!r} are not supported by this model; send text parts.",
                param=f"messages.{index}.content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def _arguments(raw: str | dict[str, Any]) -> dict[str, Any] | str:
    # Templates render arguments with `tojson`, so they want the object, not the JSON string.
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    return parsed if isinstance(parsed, dict) else raw


def to_template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = {"developer": "system", "function": "tool"}.get(message.role, message.role)
        item: dict[str, Any] = {"role": role, "content": _flatten_content(message, index)}
        if message.name:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": call.type,
                    "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)},
                }
                for call in message.tool_calls
            ]
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out
