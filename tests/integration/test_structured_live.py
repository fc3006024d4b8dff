"""Structured output on the real SmolLM2-135M: JSON always parses and validates, stream and not.

The 20 prompts of a case are sent at once: the server decodes them in one batch, each row with its own
grammar (what a shared server sees), and the case takes a fifth of the time it took one by one.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from tests.integration.conftest import MODEL

PROMPTS = [
    "Describe a cat.",
    "Tell me about Paris.",
    "What is your favorite book?",
    "List three fruits.",
    "Create a user profile for Bob.",
    "Summarize today's weather.",
    "Describe a car you like.",
    "Give details about the planet Mars.",
    "Plan a short trip to Rome.",
    "Describe a healthy breakfast.",
    "Invent a new board game.",
    "Tell me about a famous scientist.",
    "Describe your ideal house.",
    "Suggest a name for a dog.",
    "Explain what a computer is.",
    "Describe a football match.",
    "Write a recipe for pancakes.",
    "Describe the ocean.",
    "Tell me about a musical instrument.",
    "Describe a birthday party.",
]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "mood": {"type": "string", "enum": ["happy", "sad", "calm"]},
        "hobbies": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "mood", "hobbies", "address"],
    "additionalProperties": False,
}


def ask(client: openai.OpenAI, prompt: str, response_format: dict, stream: bool) -> tuple[str, str]:
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 80}
    if not stream:
        choice = client.chat.completions.create(response_format=response_format, **kwargs).choices[0]
        return choice.message.content, choice.finish_reason
    chunks = list(client.chat.completions.create(response_format=response_format, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, [c.choices[0].finish_reason for c in chunks if c.choices][-1]


def ask_all(client: openai.OpenAI, prompts: list[str], response_format: dict, stream: bool) -> list:
    """(prompt, text, finish_reason) of every prompt, all sent concurrently."""
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda prompt: ask(client, prompt, response_format, stream), prompts))
    return [(prompt, *answer) for prompt, answer in zip(prompts, answers, strict=True)]


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_json_object_always_parses(client: openai.OpenAI, stream: bool) -> None:
    for prompt, text, finish in ask_all(
        client, [f"{p} Answer in JSON." for p in PROMPTS], {"type": "json_object"}, stream
    ):
        assert finish == "stop", (prompt, text)
        assert isinstance(json.loads(text), dict), (prompt, text)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_json_schema_always_validates(client: openai.OpenAI, stream: bool) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    prompts = [f"Invent a person related to this: {p}" for p in PROMPTS]
    for prompt, text, finish in ask_all(client, prompts, response_format, stream):
        assert finish == "stop", (prompt, text)
        jsonschema.validate(json.loads(text), PERSON)


def test_budget_too_small_is_length(client: openai.OpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    choice = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format=response_format,
        max_tokens=4,
    ).choices[0]
    assert choice.finish_reason == "length"


def test_sdk_parse_helper_returns_the_model(client: openai.OpenAI) -> None:
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str
        population: int

    completion = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about Paris."}], response_format=City, max_tokens=60
    )
    city = completion.choices[0].message.parsed
    assert isinstance(city, City) and isinstance(city.population, int)
