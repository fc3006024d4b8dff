"""Legacy /v1/completions through the real openai SDK."""

from __future__ import annotations

import openai
import pytest

from tests.integration.conftest import MODEL


def complete(client: openai.OpenAI, prompt, **kwargs):
    kwargs.setdefault("temperature", 0)
    return client.completions.create(model=MODEL, prompt=prompt, **kwargs)


def test_string_prompt_default_max_tokens(client: openai.OpenAI) -> None:
    response = complete(client, "Once upon a time")
    assert response.id.startswith("cmpl-") and response.object == "text_completion"
    assert response.usage.completion_tokens <= 16
    if response.choices[0].finish_reason == "length":
        assert response.usage.completion_tokens == 16
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_prompt_forms_and_choice_order(client: openai.OpenAI) -> None:
    text = complete(client, "The capital of France is", max_tokens=4).choices[0].text
    ids_prompt = complete(client, "The capital of France is", max_tokens=0, echo=True, logprobs=0)
    assert ids_prompt.choices[0].text == "The capital of France is"
    batch = complete(client, ["The capital of France is", "One, two, three,"], n=2, max_tokens=4)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text == text  # greedy: same text for both samples
    token_batch = client.completions.create(model=MODEL, prompt=[[504, 3575, 282], [1, 2]], max_tokens=3, temperature=0)
    assert [c.index for c in token_batch.choices] == [0, 1]
    single_ids = client.completions.create(model=MODEL, prompt=[504, 3575, 282], max_tokens=3, temperature=0)
    assert single_ids.choices[0].text == token_batch.choices[0].text


def test_echo_logprobs_legacy_format(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    response = complete(client, prompt, max_tokens=3, echo=True, logprobs=2)
    choice = response.choices[0]
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    n = response.usage.prompt_tokens + response.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # first prompt token has no context
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs[1:])  # up to logprobs+1, sampled token included
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert "".join(lp.tokens) == choice.text


def test_stream_completions(client: openai.OpenAI) -> None:
    expected = complete(client, "Once upon a time", max_tokens=8).choices[0].text
    chunks = list(complete(client, "Once upon a time", max_tokens=8, stream=True))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    with_usage = list(complete(client, "Hi", max_tokens=3, stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 3


def test_stop_in_completions(client: openai.OpenAI) -> None:
    full = complete(client, "1, 2, 3, 4,", max_tokens=12).choices[0].text
    assert " 6" in full
    response = complete(client, "1, 2, 3, 4,", max_tokens=12, stop=[" 6"])
    assert response.choices[0].text == full[: full.index(" 6")]
    assert response.choices[0].finish_reason == "stop"


def test_suffix_rejected(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        complete(client, "def f(", suffix="return x", max_tokens=4)
    assert info.value.param == "suffix"
    assert "suffix" in info.value.body["message"]
