"""POST /generate and POST / (the tutorials' shapes) over FakeEngine: mapping, history, errors, docs, accounting."""

from __future__ import annotations

import datetime
import json
from typing import Any

import httpx
import pytest

from gateway.services.compat import TIME_FORMAT
from tests.unit.helpers import Gateway, make_settings, open_gateway, qwen_tokenizer

pytestmark = pytest.mark.anyio


def assert_detail(response: httpx.Response, status: int, detail: str | None = None) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    if detail is not None:
        assert body["detail"] == detail
    return body["detail"]


def last_prompt(gw: Gateway) -> str:
    return qwen_tokenizer().decode(gw.engine.requests[-1].prompt_ids)


async def test_generate_runs_the_tutorials_beam_search_and_returns_prompt_plus_continuation(gw: Gateway) -> None:
    response = await gw.client.post("/generate", json={"prompt": "Hello GPT"})
    assert response.status_code == 200, response.text
    assert response.json() == {"generated_text": "Hello GPT" + qwen_tokenizer().decode([1, 2, 3])}
    params = gw.engine.requests[-1].params
    prompt_len = len(gw.engine.requests[-1].prompt_ids)
    assert (params.num_beams, params.no_repeat_ngram_size, params.early_stopping) == (5, 2, True)
    assert params.max_new_tokens == 200 - prompt_len  # max_length counts the prompt, as in transformers
    assert params.temperature == 0.0 and params.stop_token_ids  # deterministic, stops on the model's eos


async def test_generate_overrides_and_default_model(gw: Gateway) -> None:
    body = {"prompt": "Hi", "model": "short", "max_length": 20, "num_beams": 2, "length_penalty": 0.5}
    assert (await gw.client.post("/generate", json=body)).status_code == 200
    params = gw.engine.requests[-1].params
    assert (params.num_beams, params.length_penalty, params.max_new_tokens) == (2, 0.5, 20 - 1)


@pytest.mark.parametrize("path", ["/generate", "/"])
@pytest.mark.parametrize("body", [{"prompt": ""}, {}, {"prompt": None}, {"history": []}])
async def test_empty_prompt_is_the_tutorials_400(gw: Gateway, path: str, body: dict[str, Any]) -> None:
    if path == "/generate" and "history" in body:
        body = {}
    assert_detail(await gw.client.post(path, json=body), 400, "No prompt provided")
    assert not gw.engine.requests


@pytest.mark.parametrize("path", ["/generate", "/"])
@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "Hi", "unknown": 1},
        {"prompt": 5},
        {"prompt": ["Hi"]},
        {"prompt": "Hi", "max_length": "8"},
        {"prompt": "Hi", "max_length": True},
        {"prompt": "Hi", "max_length": 0},
        {"prompt": "Hi", "model": 3},
        {"prompt": "Hi", "x\nERROR forged": 1},
    ],
)
async def test_bad_fields_are_400_detail(gw: Gateway, path: str, body: dict[str, Any]) -> None:
    assert_detail(await gw.client.post(path, json=body), 400)


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "Hi", "temperature": "hot"},
        {"prompt": "Hi", "temperature": 3},
        {"prompt": "Hi", "top_p": 0},
        {"prompt": "Hi", "top_k": 2.5},
        {"prompt": "Hi", "repetition_penalty": -1},
        {"prompt": "Hi", "history": "nope"},
        {"prompt": "Hi", "history": [["only one"]]},
        {"prompt": "Hi", "history": [["q", 1]]},
        {"prompt": "Hi", "history": [{"role": "robot", "content": "x"}]},
        {"prompt": "Hi", "history": [{"role": "user"}]},
        {"prompt": "Hi", "history": [{"role": "user", "content": "x", "name": "extra"}]},
    ],
)
async def test_bad_chat_fields_are_400_detail(gw: Gateway, body: dict[str, Any]) -> None:
    assert_detail(await gw.client.post("/", json=body), 400)


async def test_other_failures_keep_the_detail_shape(gw: Gateway) -> None:
    assert_detail(await gw.client.post("/", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_detail(await gw.client.post("/", content=b'{"prompt": "Hi"}', headers={"content-type": "text/plain"}), 415)
    assert_detail(await gw.client.post("/", json={"prompt": "Hi", "model": "nope"}), 404)
    assert_detail(await gw.client.get("/"), 405)
    surrogate = json.dumps({"prompt": "\ud800"}).encode()  # a lone surrogate, escaped as JSON allows
    for path in ("/generate", "/"):
        response = await gw.client.post(path, content=surrogate, headers={"content-type": "application/json"})
        assert 400 <= assert_detail_status(response) < 500
    huge = "word " * 2_000_000  # under the body limit of the test settings? either way a 4xx detail
    assert 400 <= assert_detail_status(await gw.client.post("/", json={"prompt": huge})) < 500
    # and /v1 still answers with the OpenAI envelope
    envelope = (await gw.client.post("/v1/chat/completions", json={"model": "fake-model"})).json()
    assert set(envelope) == {"error"}


def assert_detail_status(response: httpx.Response) -> int:
    assert set(response.json()) == {"detail"}, response.text
    return response.status_code


async def test_pairs_history_round_trips_over_three_turns(gw: Gateway) -> None:
    history: list[Any] = []
    for turn, question in enumerate(["First?", "Second?", "Third?"]):
        body = {"prompt": question, "history": history, "max_length": 8, "top_k": 5, "top_p": 0.7}
        response = await gw.client.post("/", json={**body, "temperature": 0.95, "repetition_penalty": 1.1})
        assert response.status_code == 200, response.text
        data = response.json()
        assert set(data) == {"response", "history", "status", "time"} and data["status"] == 200
        datetime.datetime.strptime(data["time"], TIME_FORMAT)
        assert data["response"] == "Hello world!"
        assert data["history"] == [*history, [question, "Hello world!"]]
        history = data["history"]
        rendered = last_prompt(gw)  # the template saw every earlier turn, in order, then this prompt
        assert rendered.count("Hello world!") == turn and rendered.rstrip().endswith("assistant")
        assert rendered.index("First?") <= rendered.index(question)
    params = gw.engine.requests[-1].params
    assert (params.top_k, params.top_p, params.temperature, params.repetition_penalty) == (5, 0.7, 0.95, 1.1)
    assert params.max_new_tokens == 8 and params.num_beams == 1


async def test_messages_history_round_trips_over_three_turns(gw: Gateway) -> None:
    history: list[Any] = [{"role": "system", "content": "Be brief."}]
    for question in ["One?", "Two?", "Three?"]:
        response = await gw.client.post("/", json={"prompt": question, "history": history})
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["history"] == [
            *history,
            {"role": "user", "content": question},
            {"role": "assistant", "content": "Hello world!"},
        ]
        history = data["history"]
    rendered = last_prompt(gw)
    assert "Be brief." in rendered and rendered.count("Hello world!") == 2 and "Three?" in rendered


async def test_tokens_are_counted_into_the_request_record() -> None:
    records = []
    async with open_gateway() as gw:
        gw.app.state.request_observers.append(records.append)
        assert (await gw.client.post("/", json={"prompt": "Hi"})).status_code == 200
        assert (await gw.client.post("/generate", json={"prompt": "Hi"})).status_code == 200
    chat, generate = records
    assert chat.route == "/" or chat.path == "/"
    for record in (chat, generate):
        assert record.prompt_tokens > 0 and record.completion_tokens == 3 and record.first_token_at is not None
        assert record.model == "fake-model"


async def test_docs_show_both_routes_with_the_tutorials_examples(gw: Gateway) -> None:
    document = (await gw.client.get("/openapi.json")).json()
    generate = document["paths"]["/generate"]["post"]
    chat = document["paths"]["/"]["post"]
    examples = generate["requestBody"]["content"]["application/json"]["examples"]
    assert examples["tutorial"]["value"] == {"prompt": "Hello GPT"}
    assert {"pairs-history", "messages-history"} <= set(chat["requestBody"]["content"]["application/json"]["examples"])
    for operation in (generate, chat):
        error = operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
        assert error.endswith("/DetailError") and "422" not in operation["responses"]


async def test_compat_routes_off_removes_them() -> None:
    async with open_gateway(settings=make_settings(compat_routes=False)) as gw:
        assert (await gw.client.post("/generate", json={"prompt": "Hi"})).status_code == 404
        assert "/" not in (await gw.client.get("/openapi.json")).json()["paths"]
