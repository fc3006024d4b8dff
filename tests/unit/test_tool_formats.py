"""Tool-call parsing, the injected tool prompt, and the per-choice output decoder."""

from __future__ import annotations

import json

from adapters.tool_calls import (
    FORMATS,
    CallListReader,
    ParsedToolCall,
    inject_tools,
    parse_hermes,
    parse_json_calls,
    template_renders_tools,
)
from gateway.services.chat_output import ChoiceDecoder
from gateway.services.output_mode import OutputMode

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_hermes_parser_extracts_calls_and_tolerates_unterminated_block() -> None:
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}'
    )
    calls = parse_hermes(text)
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]
    assert parse_hermes("<tool_call>not json</tool_call>") == []


def test_llama3_and_mistral_json_calls() -> None:
    llama = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}'
    assert [(c.name, c.arguments) for c in parse_json_calls(llama)] == [("a", {"x": 1}), ("b", {})]
    mistral = '[TOOL_CALLS] [{"name": "f", "arguments": {"q": "v"}, "id": "abcdefghi"}]'
    assert [(c.name, c.arguments) for c in parse_json_calls(mistral)] == [("f", {"q": "v"})]
    assert FORMATS["mistral"].needs_special_tokens


def test_template_tool_detection() -> None:
    assert template_renders_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert not template_renders_tools("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not template_renders_tools(None)


def test_injected_tool_prompt_and_history() -> None:
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    out = inject_tools(history, [WEATHER])
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert json.dumps(WEATHER) in out[0]["content"]
    assert out[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    }
    assert out[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    assert inject_tools([{"role": "user", "content": "hi"}], [])[0]["role"] == "system"


def run(decoder: ChoiceDecoder, pieces: list[str], finish: str = "stop"):
    events = decoder.start()
    for piece in pieces:
        events += decoder.feed(piece)
    tail, reason = decoder.finish(finish)
    return events + tail, reason


def test_auto_mode_splits_content_and_calls_across_pieces() -> None:
    decoder = ChoiceDecoder(OutputMode("tools_auto", tool_format=FORMATS["hermes"]))
    pieces = [
        "Checking",
        " now. <tool",
        '_call>\n{"name": "get_weather", ',
        '"arguments": {"city": "Paris"}}\n</tool_call>',
    ]
    events, reason = run(decoder, pieces)
    assert "".join(e.text for e in events if e.kind == "content") == "Checking now. "
    starts = [e for e in events if e.kind == "tool_start"]
    assert [(e.index, e.name) for e in starts] == [(0, "get_weather")] and starts[0].call_id.startswith("call_")
    args = "".join(e.text for e in events if e.kind == "tool_args")
    assert json.loads(args) == {"city": "Paris"}
    assert reason == "tool_calls"


def test_auto_mode_without_a_valid_call_is_plain_text() -> None:
    decoder = ChoiceDecoder(OutputMode("tools_auto", tool_format=FORMATS["hermes"]))
    events, reason = run(decoder, ["a <tool_", "call> oops", " end"])
    assert "".join(e.text for e in events) == "a <tool_call> oops end"
    assert all(e.kind == "content" for e in events) and reason == "stop"
    events, _ = run(ChoiceDecoder(OutputMode("tools_auto", tool_format=FORMATS["hermes"])), ["ends with <tool"])
    assert "".join(e.text for e in events) == "ends with <tool"


def test_required_mode_parses_the_constrained_array() -> None:
    decoder = ChoiceDecoder(OutputMode("tools_required"))
    events, reason = run(decoder, ['[{"name": "a", "arguments": {"x": 1}}', ', {"name": "b", "arguments": {}}]'])
    assert [e.name for e in events if e.kind == "tool_start"] == ["a", "b"]
    assert [e.index for e in events if e.kind == "tool_args"] == [0, 1]
    assert [json.loads(e.text) for e in events if e.kind == "tool_args"] == [{"x": 1}, {}]
    assert reason == "tool_calls"


def test_required_mode_sends_each_call_as_soon_as_it_is_complete() -> None:
    decoder = ChoiceDecoder(OutputMode("tools_required"))
    assert decoder.feed('[{"name": "a", "arguments": {"x": "}, {"}') == []  # braces inside a string
    first = decoder.feed("}, ")
    assert [(e.kind, e.index) for e in first] == [("tool_start", 0), ("tool_args", 0)]
    assert json.loads(first[1].text) == {"x": "}, {"}
    assert decoder.feed('{"name": "b", "argu') == []
    assert [e.name for e in decoder.feed('ments": {}}]') if e.kind == "tool_start"] == ["b"]
    assert decoder.finish("stop") == ([], "tool_calls")


def test_required_mode_cut_by_the_budget_keeps_the_complete_calls_and_never_leaks_text() -> None:
    complete = '[{"name": "f", "arguments": {}}, {"name": "f", "arguments": {}}, '
    events, reason = run(
        ChoiceDecoder(OutputMode("tools_required")), [complete, '{"name": "g", "arguments": {"q'], "length"
    )
    assert reason == "length"
    assert [(e.kind, e.name or e.text) for e in events] == [
        ("tool_start", "f"),
        ("tool_args", "{}"),
        ("tool_start", "f"),
        ("tool_args", "{}"),
    ]


def test_required_mode_with_no_complete_call_returns_the_cut_one_or_nothing() -> None:
    cut, reason = run(
        ChoiceDecoder(OutputMode("tools_required")), ['[{"name": "get_weather", "arguments": {"ci'], "length"
    )
    assert reason == "length"
    assert [(e.kind, e.name or e.text) for e in cut] == [("tool_start", "get_weather"), ("tool_args", '{"ci')]
    nameless, reason = run(ChoiceDecoder(OutputMode("tools_required")), ['[{"name": "get_w'], finish="length")
    assert reason == "length" and nameless == []
    unconstrained, _ = run(ChoiceDecoder(OutputMode("tools_required")), ["no JSON at all"])
    assert [(e.kind, e.text) for e in unconstrained] == [("content", "no JSON at all")]


def test_call_list_reader() -> None:
    reader = CallListReader()
    assert reader.feed(' [{"name": "a", "arguments": {"k": [1, {"z": 2}]}},') == [
        ParsedToolCall("a", {"k": [1, {"z": 2}]})
    ]
    assert reader.cut_call() is None and reader.is_call_list()
    assert reader.feed(' {"name": "b\\"c", "arguments": ') == []
    assert reader.cut_call() == ('b"c', "")
    assert reader.feed("{}}]") == [ParsedToolCall('b"c', {})]
    assert reader.feed("") == [] and reader.cut_call() is None


def test_named_mode_opens_the_call_first_then_streams_arguments() -> None:
    decoder = ChoiceDecoder(OutputMode("tool_named", named_tool="get_weather"))
    events, reason = run(decoder, ['{"city"', ': "Paris"}'])
    assert events[0].kind == "tool_start" and events[0].name == "get_weather"
    assert "".join(e.text for e in events[1:]) == '{"city": "Paris"}'
    assert reason == "tool_calls"


def test_reasoning_split_with_markers_across_pieces() -> None:
    decoder = ChoiceDecoder(OutputMode("text", reasoning=True))
    events, _ = run(decoder, ["<thi", "nk>Let me think", " hard.</th", "ink>\n\nThe answer", " is 4."])
    assert "".join(e.text for e in events if e.kind == "reasoning") == "Let me think hard."
    assert "".join(e.text for e in events if e.kind == "content") == "The answer is 4."
    started = ChoiceDecoder(OutputMode("text", reasoning=True), starts_in_reasoning=True)
    events, _ = run(started, ["hmm</think>ok"])
    assert [(e.kind, e.text) for e in events] == [("reasoning", "hmm"), ("content", "ok")]
    plain, _ = run(ChoiceDecoder(OutputMode("text", reasoning=True)), ["No thinking here."])
    assert [(e.kind, e.text) for e in plain] == [("content", "No thinking here.")]
