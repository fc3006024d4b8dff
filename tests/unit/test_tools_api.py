"""Tools and response_format through the HTTP layer (FakeEngine scripts the model's text)."""

from __future__ import annotations

import json

import pytest

from gateway.engine.fake import FakeEngine
from tests.unit.helpers import assert_envelope, finish_reasons, open_gateway, sse_events

pytestmark = pytest.mark.anyio

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
HERMES = ["Sure. ", "<tool_call>\n", '{"name": "get_weather", ', '"arguments": {"city": "Paris"}}', "\n</tool_call>"]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


async def test_auto_tool_call_non_stream() -> None:
    async with open_gateway(FakeEngine(pieces=HERMES)) as gw:
        r = await gw.chat(messages=ASK, tools=TOOLS)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Sure. "
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


async def test_auto_tool_call_stream_deltas_follow_the_protocol() -> None:
    async with open_gateway(FakeEngine(pieces=HERMES)) as gw:
        r = await gw.chat(messages=ASK, tools=TOOLS, stream=True)
    events = sse_events(r.text)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Sure. " and "<tool_call>" not in content
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    first, rest = calls[0], calls[1:]
    assert first["index"] == 0 and first["type"] == "function" and first["id"].startswith("call_")
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert rest and all(set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in rest)
    assert json.loads("".join(c["function"]["arguments"] for c in rest)) == {"city": "Paris"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls" and events[-1]["choices"][0]["delta"] == {}


async def test_named_tool_choice_streams_arguments_under_one_call() -> None:
    engine = FakeEngine(pieces=['{"city"', ': "Paris"}'])
    async with open_gateway(engine) as gw:
        body = {
            "messages": ASK,
            "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }
        r = await gw.chat(stream=True, **body)
        non_stream = (await gw.chat(**body)).json()["choices"][0]
    deltas = [e["choices"][0]["delta"] for e in sse_events(r.text) if e["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert "".join(c["function"].get("arguments", "") for c in calls) == '{"city": "Paris"}'
    assert non_stream["message"]["content"] is None
    assert non_stream["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert engine.requests[0].params.logits_processors, "named tool_choice must be grammar-constrained"


async def test_tool_choice_none_and_plain_requests_have_no_tool_calls() -> None:
    async with open_gateway(FakeEngine(pieces=HERMES)) as gw:
        r = await gw.chat(messages=ASK, tools=TOOLS, tool_choice="none")
    message = r.json()["choices"][0]["message"]
    assert "tool_calls" not in message and "<tool_call>" in message["content"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ],
)
async def test_invalid_tool_and_format_requests(body, param) -> None:
    async with open_gateway() as gw:
        r = await gw.chat(messages=ASK, **body)
    error = assert_envelope(r, 400)
    assert error["param"] == param


async def test_unsupported_schema_gets_the_message_langchain_recognizes() -> None:
    schema = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}
    async with open_gateway() as gw:
        r = await gw.chat(
            messages=ASK, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        )
    error = assert_envelope(r, 400)
    assert "'response_format' of type 'json_schema' is not supported with this model" in error["message"]
    assert "'not'" in error["message"]


async def test_json_modes_attach_a_grammar_and_show_the_schema() -> None:
    engine = FakeEngine(pieces=['{"a": 1}'])
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    async with open_gateway(engine) as gw:
        r = await gw.chat(
            messages=ASK, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        )
        assert r.json()["choices"][0]["message"]["content"] == '{"a": 1}'
        await gw.chat(messages=ASK, response_format={"type": "json_object"})
        await gw.chat(messages=ASK, response_format={"type": "text"})
    schema_req, object_req, text_req = engine.requests
    assert len(schema_req.params.logits_processors) == 2  # grammar mask + closing pressure
    assert object_req.params.logits_processors and not text_req.params.logits_processors


def _call_grammar_accepts(engine: FakeEngine, request: int, text: str) -> bool:
    """Whether the grammar the request was planned with accepts `text` as a complete output."""
    import xgrammar as xgr

    from tests.unit.helpers import qwen_tokenizer

    mask = engine.requests[request].params.logits_processors[0]()
    matcher = xgr.GrammarMatcher(mask.compiled_grammars[0])
    tokens = qwen_tokenizer().encode(text, add_special_tokens=False)
    return all(matcher.accept_token(t) for t in tokens) and matcher.accept_token(qwen_tokenizer().eos_token_id)


async def test_forced_call_lists_hold_at_most_one_call_per_tool_and_one_without_parallel_calls() -> None:
    engine = FakeEngine(pieces=['[{"name": "get_time", "arguments": {}}]'])
    async with open_gateway(engine) as gw:
        await gw.chat(messages=ASK, tools=TOOLS, tool_choice="required")
        await gw.chat(messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
        await gw.chat(messages=ASK, tools=TOOLS[1:], tool_choice={"type": "function", "function": {"name": "get_time"}})
    time_call, weather_call = (
        '{"name": "get_time", "arguments": {}}',
        '{"name": "get_weather", "arguments": {"city": "X"}}',
    )
    assert _call_grammar_accepts(engine, 0, f"[{time_call}, {weather_call}]")
    assert _call_grammar_accepts(engine, 0, f"[{time_call}, {time_call}]")  # a repeat, within the bound
    assert not _call_grammar_accepts(engine, 0, f"[{time_call}, {weather_call}, {time_call}]")
    assert _call_grammar_accepts(engine, 1, f"[{weather_call}]")
    assert not _call_grammar_accepts(engine, 1, f"[{time_call}, {weather_call}]")
    assert not _call_grammar_accepts(engine, 0, '[{"name": "get_time", "arguments": {"x": 1}}]')  # no-arg: {} only
    assert _call_grammar_accepts(engine, 2, "{}") and not _call_grammar_accepts(engine, 2, "{} {}")  # named: ends


LOOP = ['[{"name": "get_time", ', '"arguments": {}}', *[', {"name": "get_time", ', '"arguments": {}}'] * 20]


async def test_forced_calls_cut_by_the_budget_come_back_as_tool_calls() -> None:
    async with open_gateway(FakeEngine(pieces=LOOP)) as gw:
        for cut_at in (5, 6):  # inside the third call / right after it
            body = {"messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": cut_at}
            plain = (await gw.chat(**body)).json()["choices"][0]
            events = sse_events((await gw.chat(stream=True, **body)).text)
            complete = [("get_time", "{}")] * (cut_at // 2)
            assert plain["finish_reason"] == "length" and plain["message"]["content"] is None
            calls = plain["message"]["tool_calls"]
            assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == complete
            deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
            assert not "".join(d.get("content") or "" for d in deltas)
            streamed: dict[int, dict] = {}
            for call in (c for d in deltas for c in d.get("tool_calls") or []):
                entry = streamed.setdefault(call["index"], {"name": call["function"].get("name"), "arguments": ""})
                entry["arguments"] += call["function"].get("arguments") or ""
            assert [(c["name"], c["arguments"]) for c in streamed.values()] == complete
            assert finish_reasons(events) == ["length"]
