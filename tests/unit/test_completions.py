"""Legacy /v1/completions: prompt forms, prompt*n+j order, echo, streaming, legacy logprobs (compat §8, §9 24-25)."""

from __future__ import annotations

import pytest

from gateway.engine.fake import FakeEngine
from tests.unit.helpers import (
    MODEL,
    completion_stream_text,
    is_compact,
    open_gateway,
    qwen_pipeline,
    qwen_tokenizer,
    sse_events,
    sse_payloads,
)

pytestmark = pytest.mark.anyio

GENERATED = "Hello world!"


def token_ids(text: str) -> list[int]:
    return qwen_tokenizer().encode(text, add_special_tokens=False)


async def test_string_prompt(gw):
    r = await gw.completion(prompt="Once upon a time")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == MODEL
    assert [c["index"] for c in body["choices"]] == [0]
    assert body["choices"][0]["text"] == GENERATED
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["logprobs"] is None
    assert gw.engine.requests[0].prompt_ids == qwen_pipeline().encode_prompt("Once upon a time")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(gw.engine.requests[0].prompt_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] == usage["prompt_tokens"] + 3


async def test_default_max_tokens_is_16(gw):
    await gw.completion(prompt="x")
    assert gw.engine.requests[0].params.max_new_tokens == 16


PROMPT_FORMS = {  # built lazily: the tokenizer loads inside the test, not at collection
    "str": lambda: ("alpha beta", ["alpha beta"]),
    "list_str": lambda: (["alpha beta", "gamma"], ["alpha beta", "gamma"]),
    "ids": lambda: (token_ids("alpha beta"), ["alpha beta"]),
    "list_ids": lambda: ([token_ids("alpha beta"), token_ids("gamma delta")], ["alpha beta", "gamma delta"]),
}


@pytest.mark.parametrize("form", list(PROMPT_FORMS))
async def test_prompt_forms_with_n2_are_ordered_prompt_major(gw, form):
    prompt, texts = PROMPT_FORMS[form]()
    body = (await gw.completion(prompt=prompt, n=2, echo=True)).json()
    choices = body["choices"]
    assert [c["index"] for c in choices] == list(range(len(texts) * 2))
    for c in choices:
        assert c["text"] == texts[c["index"] // 2] + GENERATED, (form, c)
    assert len(gw.engine.requests) == len(texts) * 2
    expected_prompts = sorted(
        tuple(p if isinstance(p, list) else qwen_pipeline().encode_prompt(p))
        for p in ([prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else prompt)
    )
    assert sorted({tuple(r.prompt_ids) for r in gw.engine.requests}) == expected_prompts
    assert body["usage"]["completion_tokens"] == 3 * len(texts) * 2


async def test_prompt_list_streams_with_indices(gw):
    events = sse_events((await gw.completion(prompt=["a", "b"], n=2, stream=True)).text)
    seen = {c["index"] for e in events for c in e["choices"]}
    assert seen == {0, 1, 2, 3}
    finishes = {c["index"]: c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]}
    assert finishes == {0: "stop", 1: "stop", 2: "stop", 3: "stop"}
    for i in range(4):
        assert completion_stream_text(events, i) == GENERATED


async def test_echo_prepends_prompt(gw):
    body = (await gw.completion(prompt="Tell me", echo=True)).json()
    assert body["choices"][0]["text"] == "Tell me" + GENERATED
    events = sse_events((await gw.completion(prompt="Tell me", echo=True, stream=True)).text)
    assert completion_stream_text(events) == "Tell me" + GENERATED


async def test_echo_with_max_tokens_zero_returns_only_prompt(gw):
    body = (await gw.completion(prompt="Just this", echo=True, max_tokens=0)).json()
    assert body["choices"][0]["text"] == "Just this"
    assert body["usage"]["completion_tokens"] == 0


async def test_stream_chunks_are_text_completion(gw):
    r = await gw.completion(prompt="hi", stream=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(r.text)
    assert all(is_compact(p) for p in payloads[:-1])
    events = sse_events(r.text)
    assert len({e["id"] for e in events}) == 1
    for e in events:
        assert e["object"] == "text_completion"
        assert e["model"] == MODEL
        assert isinstance(e["created"], int)
        assert "usage" not in e or e["usage"] is None
    choices = [c for e in events for c in e["choices"]]
    assert all(c["finish_reason"] is None for c in choices[:-1])
    assert choices[-1]["finish_reason"] == "stop"
    assert completion_stream_text(events) == GENERATED


async def test_stream_usage_only_when_requested(gw):
    events = sse_events((await gw.completion(prompt="hi", stream=True, stream_options={"include_usage": True})).text)
    assert events[-1]["choices"] == []
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    assert all(e["choices"] for e in events[:-1])


async def test_length_and_stop_in_completions():
    async with open_gateway(FakeEngine(pieces=["Hel", "lo wo", "rld"])) as gw:
        body = (await gw.completion(prompt="x", max_tokens=2)).json()
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["choices"][0]["text"] == "Hello wo"
        assert body["usage"]["completion_tokens"] == 2
        body = (await gw.completion(prompt="x", stop=["lo w"])).json()
        assert body["choices"][0]["text"] == "Hel"
        assert body["choices"][0]["finish_reason"] == "stop"
        events = sse_events((await gw.completion(prompt="x", stop=["lo w"], stream=True)).text)
        assert completion_stream_text(events) == "Hel"


def check_legacy_logprobs(logprobs: dict, k: int) -> None:
    tokens = logprobs["tokens"]
    assert tokens == ["Hello", " world", "!"]
    assert len(logprobs["token_logprobs"]) == len(tokens)
    assert len(logprobs["top_logprobs"]) == len(tokens)
    assert len(logprobs["text_offset"]) == len(tokens)
    assert logprobs["text_offset"] == [0, 5, 11]
    for token, lp, top in zip(tokens, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert isinstance(lp, float)
        assert isinstance(top, dict)
        assert top[token] == lp  # the sampled token is among the alternatives
        assert len(top) <= k + 1


async def test_legacy_logprobs_shape(gw):
    body = (await gw.completion(prompt="hi", logprobs=2)).json()
    assert gw.engine.requests[0].params.logprobs == 2
    assert gw.engine.requests[0].params.prompt_logprobs is None
    check_legacy_logprobs(body["choices"][0]["logprobs"], 2)


async def test_legacy_logprobs_stream_concatenates_to_the_same(gw):
    events = sse_events((await gw.completion(prompt="hi", logprobs=2, stream=True)).text)
    merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in events:
        for c in e["choices"]:
            if c.get("logprobs"):
                for key in merged:
                    merged[key].extend(c["logprobs"][key])
    check_legacy_logprobs(merged, 2)


async def test_echo_with_logprobs_requests_prompt_logprobs(gw):
    body = (await gw.completion(prompt="hi", echo=True, logprobs=1, max_tokens=1)).json()
    params = gw.engine.requests[0].params
    assert params.prompt_logprobs == 1 and params.logprobs == 1
    assert body["choices"][0]["text"].startswith("hi")
    offsets = body["choices"][0]["logprobs"]["text_offset"]
    assert offsets[0] == len("hi")  # generated text starts after the echoed prompt


async def test_best_of_different_from_n_is_400(gw):
    r = await gw.completion(prompt="x", best_of=3, n=1)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "best_of"
    assert (await gw.completion(prompt="x", best_of=1)).status_code == 200
