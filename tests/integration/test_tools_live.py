"""Tool calling on the real SmolLM2-135M with the openai SDK and LangChain."""

from __future__ import annotations

import json

import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.integration.conftest import MODEL, RunningServer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the current time in a timezone",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
        },
    },
]
ASK = [{"role": "user", "content": "What's the weather like in Paris right now?"}]


def check_calls(calls) -> list[tuple[str, dict]]:
    names = {t["function"]["name"]: t for t in TOOLS}
    out = []
    assert calls and len({c.id for c in calls}) == len(calls), "ids must be unique"
    for call in calls:
        assert call.type == "function" and call.function.name in names
        args = json.loads(call.function.arguments)
        assert set(names[call.function.name]["function"]["parameters"]["required"]) <= set(args)
        out.append((call.function.name, args))
    return out


def test_required_tool_choice_stream_accumulates_like_non_stream(client: openai.OpenAI) -> None:
    kwargs = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 120,
    }
    plain = client.chat.completions.create(**kwargs).choices[0]
    assert plain.finish_reason == "tool_calls"
    expected = check_calls(plain.message.tool_calls)
    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    assert check_calls(final.message.tool_calls) == expected
    assert not final.message.content


def test_named_tool_choice_and_single_call(client: openai.OpenAI) -> None:
    choice = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_tokens=60,
    ).choices[0]
    calls = check_calls(choice.message.tool_calls)
    assert [name for name, _ in calls] == ["get_time"]
    one = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=120
    ).choices[0]
    assert len(check_calls(one.message.tool_calls)) == 1


class Weather(BaseModel):
    """Weather report for a city."""

    city: str = Field(description="City name")
    temperature: int = Field(description="Temperature in degrees")
    sunny: bool


@pytest.fixture
def llm(server: RunningServer) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=server.base_url, api_key="x", temperature=0, max_tokens=80, max_retries=0)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output_pydantic(llm: ChatOpenAI, method: str) -> None:
    result = llm.with_structured_output(Weather, method=method).invoke("The weather in Rome is sunny and 25 degrees.")
    assert isinstance(result, Weather)


def test_langchain_json_mode(llm: ChatOpenAI) -> None:
    result = llm.with_structured_output(None, method="json_mode").invoke(
        "Return a JSON object with keys city and temperature for Rome."
    )
    assert isinstance(result, dict)


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny and 22 degrees in {city}."


@tool
def get_time(timezone: str) -> str:
    """Get the current time in a timezone."""
    return "12:00"


@pytest.mark.parametrize("tool_choice", ["get_weather", "any"])
def test_langchain_bind_tools(llm: ChatOpenAI, tool_choice: str) -> None:
    message = llm.bind_tools([get_weather, get_time], tool_choice=tool_choice).invoke("Weather in Paris?")
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] in ("get_weather", "get_time") and isinstance(call["args"], dict) and call["id"]
    if tool_choice == "get_weather":
        assert call["name"] == "get_weather" and "city" in call["args"]


def test_langchain_agent_loop(llm: ChatOpenAI) -> None:
    tools = {"get_weather": get_weather, "get_time": get_time}
    messages = [HumanMessage("What's the weather in Paris?")]
    first = llm.bind_tools(list(tools.values()), tool_choice="get_weather").invoke(messages)
    assert first.tool_calls
    messages.append(first)
    for call in first.tool_calls:
        messages.append(ToolMessage(tools[call["name"]].invoke(call["args"]), tool_call_id=call["id"]))
    final = llm.bind_tools(list(tools.values())).invoke(messages)
    assert final.content or final.tool_calls
    streamed = list(llm.bind_tools(list(tools.values()), tool_choice="any").stream(messages))
    merged = streamed[0]
    for chunk in streamed[1:]:
        merged = merged + chunk
    assert merged.tool_calls and merged.tool_calls[0]["name"] in tools
