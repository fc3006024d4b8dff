"""The schema-conformance helper itself: OpenAI's own examples pass, known violations are caught."""

from __future__ import annotations

import copy
import json

import pytest

from tests.conformance import COMPLETION_STREAM_CHUNK, SPEC_PATH, violations


def _example(name: str) -> dict:
    document = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return json.loads(document["components"]["schemas"][name]["x-oaiMeta"]["example"])


CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}

COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "text": "Hello world",
            "finish_reason": "length",
            "logprobs": {
                "tokens": ["Hello", " world"],
                "token_logprobs": [None, -1.5],
                "top_logprobs": [None, {" world": -1.5}],
                "text_offset": [0, 5],
            },
        }
    ],
}


@pytest.mark.parametrize("name", ["CreateChatCompletionResponse", "CreateCompletionResponse", "Model"])
def test_openai_documented_examples_conform(name: str) -> None:
    assert violations(name, _example(name)) == []


def test_a_conforming_chat_completion_passes() -> None:
    assert violations("CreateChatCompletionResponse", CHAT) == []


def test_missing_refusal_is_a_violation() -> None:
    payload = copy.deepcopy(CHAT)
    del payload["choices"][0]["message"]["refusal"]
    assert any("refusal" in v for v in violations("CreateChatCompletionResponse", payload))


def test_null_system_fingerprint_is_a_violation() -> None:
    assert violations("CreateChatCompletionResponse", {**CHAT, "system_fingerprint": None})
    assert violations("CreateChatCompletionResponse", {**CHAT, "system_fingerprint": "fp_gantry"}) == []


def test_nullable_is_translated_to_a_union_that_keeps_the_enum() -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}],
    }
    assert violations("CreateChatCompletionStreamResponse", chunk) == []
    chunk["choices"][0]["finish_reason"] = "bogus"
    assert violations("CreateChatCompletionStreamResponse", chunk)


def test_echo_allows_a_null_logprob_only_in_first_place() -> None:
    assert violations("CreateCompletionResponse", COMPLETION) == []
    payload = copy.deepcopy(COMPLETION)
    payload["choices"][0]["logprobs"]["token_logprobs"] = [-1.0, None]
    assert violations("CreateCompletionResponse", payload)


def test_null_finish_reason_only_in_completion_stream_chunks() -> None:
    payload = copy.deepcopy(COMPLETION)
    payload["choices"][0]["finish_reason"] = None
    assert violations("CreateCompletionResponse", payload)
    assert violations(COMPLETION_STREAM_CHUNK, payload) == []


def test_error_envelope_requires_all_four_fields() -> None:
    error = {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    assert violations("ErrorResponse", {"error": error}) == []
    assert violations("ErrorResponse", {"error": {"message": "bad", "type": "x"}})


def test_embedding_response_shape() -> None:
    payload = {
        "object": "list",
        "model": "m",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    assert violations("CreateEmbeddingResponse", payload) == []
    del payload["usage"]
    assert violations("CreateEmbeddingResponse", payload)


def test_unknown_schema_name_is_refused() -> None:
    with pytest.raises(KeyError):
        violations("NoSuchSchema", {})
