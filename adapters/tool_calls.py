"""Tool-call formats: parse model output into calls, and render tools for templates that cannot.

Each format is data (its start markers) plus one parse function; the family record names its format
(`FamilyAdapter.tool_parser`). Templates without tool support get the Hermes format through an
injected system prompt, so every model can call tools the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParsedToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolCallFormat:
    name: str
    markers: tuple[str, ...]  # text that starts a call; content before it is ordinary text
    parse: Callable[[str], list[ParsedToolCall]]  # text from the first marker on → calls ([] if none)
    needs_special_tokens: bool = False  # the markers are special tokens (decode must keep them)


def _call(obj: Any) -> ParsedToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return ParsedToolCall(obj["name"], args) if isinstance(args, dict) else None


def _json_values(text: str) -> list[Any]:
    """Every top-level JSON value in text, in order (tolerates separators such as ';' or newlines)."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        start = min((i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0), default=-1)
        if start < 0:
            break
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        values.append(value)
        pos = end
    return values


_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> list[ParsedToolCall]:
    calls = []
    for block in _HERMES_BLOCK.findall(text):
        for value in _json_values(block)[:1]:
            call = _call(value)
            if call:
                calls.append(call)
    return calls


def parse_json_calls(text: str) -> list[ParsedToolCall]:
    """Llama-3.1 JSON (`{"name", "parameters"}`, ';'-separated) and Mistral's `[TOOL_CALLS] [...]`."""
    calls = []
    for value in _json_values(text):
        for item in value if isinstance(value, list) else [value]:
            call = _call(item)
            if call:
                calls.append(call)
    return calls


_DECODER = json.JSONDecoder()
_CUT_CALL = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(.*)', re.DOTALL)


@dataclass
class CallListReader:
    """Reads forced tool calls (`[{"name": …, "arguments": {…}}, …]`) as they are generated: each call
    is returned once its object is complete, so a list cut off by the token budget still yields every
    call before the cut, and streaming sends exactly the calls a non-streamed response would hold."""

    text: str = ""
    _next: int = 0  # where the next call (or the `[` / `,` before it) starts

    def feed(self, text: str) -> list[ParsedToolCall]:
        """Add generated text; return the calls it completed."""
        self.text += text
        calls = []
        while True:
            start = len(self.text) - len(self.text[self._next :].lstrip())
            head = self.text[start : start + 1]
            if head in ("[", ","):
                self._next = start + 1
                continue
            if head != "{":
                return calls
            try:
                value, self._next = _DECODER.raw_decode(self.text, start)
            except json.JSONDecodeError:  # this call is not complete yet
                return calls
            call = _call(value)
            if call:
                calls.append(call)

    def cut_call(self) -> tuple[str, str] | None:
        """Name and argument text of an incomplete call whose name was generated, if any."""
        match = _CUT_CALL.match(self.text, len(self.text) - len(self.text[self._next :].lstrip()))
        return (json.loads(match.group(1)), match.group(2)) if match else None

    def is_call_list(self) -> bool:
        """Whether the text is (the start of) a JSON array, as the grammar makes it."""
        return self.text.lstrip().startswith("[")


FORMATS: dict[str, ToolCallFormat] = {
    "hermes": ToolCallFormat("hermes", ("<tool_call>",), parse_hermes),
    "llama3_json": ToolCallFormat("llama3_json", ("<|python_tag|>", '{"name"'), parse_json_calls),
    "mistral": ToolCallFormat("mistral", ("[TOOL_CALLS]",), parse_json_calls, needs_special_tokens=True),
}
DEFAULT_FORMAT = "hermes"


def template_renders_tools(chat_template: str | None) -> bool:
    """Whether a chat template has its own tool rendering (it reads the `tools` variable)."""
    return bool(chat_template) and re.search(r"\btools\b", chat_template or "") is not None


TOOL_SYSTEM_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def inject_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hermes-style tool use for templates that cannot render tools: a system prompt listing them,
    assistant calls as <tool_call> blocks, tool results as <tool_response> user turns."""
    listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    prompt = TOOL_SYSTEM_PROMPT.format(tools=listing)
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            blocks = [
                "<tool_call>\n"
                + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
                + "\n</tool_call>"
                for c in message["tool_calls"]
            ]
            text = "\n".join(filter(None, [message.get("content") or "", *blocks]))
            out.append({"role": "assistant", "content": text})
        elif role == "tool":
            result = message.get("content") or ""
            out.append({"role": "user", "content": f"<tool_response>\n{result}\n</tool_response>"})
        else:
            out.append(dict(message))
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{prompt}".lstrip()}
    else:
        out.insert(0, {"role": "system", "content": prompt})
    return out
