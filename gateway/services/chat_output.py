"""Turn one choice's generated text into content, reasoning and tool-call events.

Streaming and non-streaming both run this decoder, so they cannot disagree. Markers (`<think>`,
`</think>`, a format's tool-call start) are held back while undecided, like stop strings.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Literal

from adapters.tool_calls import CallListReader, ParsedToolCall
from gateway.services.output_mode import OutputMode
from gateway.services.stops import split_at_marker

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class Event:
    kind: Literal["content", "reasoning", "tool_start", "tool_args"]
    text: str = ""
    index: int = 0
    call_id: str = ""
    name: str = ""


@dataclass
class ChoiceDecoder:
    mode: OutputMode
    starts_in_reasoning: bool = False
    _phase: str = "undecided"  # undecided → reasoning → content
    _buffer: str = ""
    _captured: str | None = None  # tool-call text after the start marker (auto)
    _call_list: CallListReader | None = None  # the whole output (required)
    _calls: int = 0
    events_so_far: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.mode.reasoning:
            self._phase = "content"
        elif self.starts_in_reasoning:
            self._phase = "reasoning"
        if self.mode.kind == "tools_required":
            self._call_list = CallListReader()

    def start(self) -> list[Event]:
        """Events known before any text: a named tool call opens at once."""
        if self.mode.kind != "tool_named":
            return []
        self._calls = 1
        return [Event("tool_start", call_id=new_tool_call_id(), name=self.mode.named_tool or "")]

    def feed(self, text: str) -> list[Event]:
        if self.mode.kind == "tool_named":
            return [Event("tool_args", text)] if text else []
        if self._call_list is not None:  # each call goes out as soon as its object is complete
            return self._call_events(_as_text(self._call_list.feed(text)))
        if self._captured is not None:
            self._captured += text
            return []
        self._buffer += text
        events: list[Event] = []
        while True:
            if self._phase == "undecided":
                stripped = self._buffer.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self._phase, self._buffer = "reasoning", stripped[len(THINK_OPEN) :]
                elif THINK_OPEN.startswith(stripped):
                    return events  # could still become <think>
                else:
                    self._phase = "content"
            if self._phase == "reasoning":
                before, marker, after = split_at_marker(self._buffer, [THINK_CLOSE])
                if before:
                    events.append(Event("reasoning", before))
                if marker is None:
                    self._buffer = after
                    return events
                self._phase, self._buffer = "content", after.lstrip("\n")
            if self._phase == "content":
                return events + self._content(final=False)

    def _content(self, *, final: bool) -> list[Event]:
        markers = self.mode.tool_format.markers if self.mode.kind == "tools_auto" and self.mode.tool_format else ()
        if not markers:
            text, self._buffer = self._buffer, ""
            return [Event("content", text)] if text else []
        before, marker, after = split_at_marker(self._buffer, markers)
        if marker is not None:
            self._captured, self._buffer = marker + after, ""
        elif final:
            before, self._buffer = self._buffer, ""
        else:
            self._buffer = after
        return [Event("content", before)] if before else []

    def finish(self, finish_reason: str) -> tuple[list[Event], str]:
        """Flush held text and parse captured tool calls; returns events and the final finish_reason."""
        events: list[Event] = []
        if self._phase == "reasoning" and self._buffer:
            events.append(Event("reasoning", self._buffer))
            self._buffer = ""
        elif self._phase != "reasoning":
            events += self._content(final=True)
        if self._call_list is not None:
            events += self._finish_call_list()
        if self._captured is not None:
            events += self._parse_captured()
        if self._calls and finish_reason != "length":
            finish_reason = "tool_calls"
        return events, finish_reason

    def _finish_call_list(self) -> list[Event]:
        """Forced calls: the complete ones went out already; the text of a call cut off by the budget
        is dropped, never turned into content. Only when no call was complete does the cut one go
        out, with its arguments as far as they got (OpenAI's `length` behaviour)."""
        reader, self._call_list = self._call_list, None
        if self._calls:
            return []
        cut = reader.cut_call()
        if cut is not None:
            return self._call_events([cut])
        if reader.is_call_list() or not reader.text:
            return []
        return [Event("content", reader.text)]  # an engine without the grammar wrote something else

    def _parse_captured(self) -> list[Event]:
        text, self._captured = self._captured or "", None
        calls = self.mode.tool_format.parse(text) if self.mode.tool_format else []
        if not calls:  # not a well-formed call after all (or cut by max_tokens): it is text
            return [Event("content", text)] if text else []
        return self._call_events(_as_text(calls))

    def _call_events(self, calls: list[tuple[str, str]]) -> list[Event]:
        """Start + arguments events for each (name, argument text)."""
        events = []
        for name, arguments in calls:
            index = self._calls
            self._calls += 1
            events.append(Event("tool_start", index=index, call_id=new_tool_call_id(), name=name))
            if arguments:
                events.append(Event("tool_args", arguments, index=index))
        return events


def _as_text(calls: list[ParsedToolCall]) -> list[tuple[str, str]]:
    return [(c.name, json.dumps(c.arguments, ensure_ascii=False)) for c in calls]
