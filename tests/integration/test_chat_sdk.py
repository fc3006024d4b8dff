"""Chat completions through the real openai SDK against the real server and model."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.integration.conftest import MODEL, chat


def stream_text(client: openai.OpenAI, **kwargs) -> tuple[str, list]:
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 24)
    messages = kwargs.pop("messages", [{"role": "user", "content": "What is the capital of France?"}])
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_non_stream_shape(client: openai.OpenAI) -> None:
    response = chat(client)
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert isinstance(response.created, int)
    assert response.model == MODEL
    choice = response.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content and "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_matches_non_stream_at_temperature_zero(client: openai.OpenAI) -> None:
    expected = chat(client).choices[0].message.content
    text, chunks = stream_text(client)
    assert text == expected
    roles = [c.choices[0].delta.role for c in chunks if c.choices]
    assert roles[0] == "assistant" and all(r is None for r in roles[1:])
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert all(not c.usage for c in chunks), "no usage chunk unless include_usage"


def test_stream_usage_chunk_only_when_requested(client: openai.OpenAI) -> None:
    _, chunks = stream_text(client, stream_options={"include_usage": True}, max_tokens=6)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    usage = chunks[-1].usage
    assert usage.completion_tokens == 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c.choices for c in chunks[:-1])


def test_max_tokens_exact_length(client: openai.OpenAI) -> None:
    response = chat(client, content="Write a long story about a dragon.", max_tokens=5)
    assert response.usage.completion_tokens == 5
    assert response.choices[0].finish_reason == "length"
    response = chat(client, content="Write a long story about a dragon.", max_completion_tokens=7, max_tokens=50)
    assert response.usage.completion_tokens == 7  # max_completion_tokens wins, as LangChain sends it


def test_seed_reproducible_at_temperature_one(client: openai.OpenAI) -> None:
    kwargs = {"content": "Tell me a short poem.", "temperature": 1.0, "seed": 1234, "max_tokens": 20}
    first = chat(client, **kwargs).choices[0].message.content
    second = chat(client, **kwargs).choices[0].message.content
    assert first == second
    streamed, _ = stream_text(
        client,
        messages=[{"role": "user", "content": "Tell me a short poem."}],
        temperature=1.0,
        seed=1234,
        max_tokens=20,
    )
    assert streamed == first
    others = {chat(client, **{**kwargs, "seed": seed}).choices[0].message.content for seed in (1, 2, 3)}
    assert len(others | {first}) > 1, "different seeds should not all give the same sample"


def test_stop_string_spanning_tokens_trimmed(client: openai.OpenAI) -> None:
    probe = chat(client, logprobs=True, max_tokens=16)
    tokens = [t.token for t in probe.choices[0].logprobs.content]
    full = probe.choices[0].message.content
    # A stop string made of the end of one token and the start of the next one.
    index = next(i for i in range(1, len(tokens) - 1) if len(tokens[i]) >= 2 and len(tokens[i + 1].strip()) >= 1)
    stop = tokens[i_end := index][-2:] + tokens[i_end + 1][:2]
    assert stop in full
    expected = full[: full.index(stop)]
    response = chat(client, stop=[stop, "zzzz-never"], max_tokens=16)
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "stop"
    streamed, chunks = stream_text(client, stop=stop, max_tokens=16)
    assert streamed == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_n_choices(client: openai.OpenAI) -> None:
    response = chat(client, n=2, temperature=0.8, seed=7, max_tokens=8)
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content for c in response.choices)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=2, stream=True, max_tokens=6, seed=7
        )
    )
    assert [c.index for c in chunks[0].choices] == [0, 1]
    finished = {choice.index for c in chunks for choice in c.choices if choice.finish_reason}
    assert finished == {0, 1}


def test_logprobs_shape(client: openai.OpenAI) -> None:
    response = chat(client, logprobs=True, top_logprobs=3, max_tokens=6)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == 6
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.bytes == list(item.token.encode())
        assert item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob
    assert "".join(t.token for t in content) == response.choices[0].message.content
    _, chunks = stream_text(client, logprobs=True, top_logprobs=2, max_tokens=6)
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert len(streamed) == 6


def token_text(client: openai.OpenAI, token_id: int) -> str:
    """The text of one token id, through /v1/completions echo with max_tokens=0."""
    return client.completions.create(model=MODEL, prompt=[token_id], max_tokens=0, echo=True).choices[0].text


def test_logit_bias_forces_token_and_stop_token_ids(client: openai.OpenAI) -> None:
    forced = token_text(client, 9999)
    biased = chat(client, logit_bias={"9999": 100}, max_tokens=1)
    assert biased.choices[0].message.content == forced
    # The same token as a request stop id: generation ends on it, finish "stop", the token is not shown.
    stopped = chat(client, logit_bias={"9999": 100}, max_tokens=5, extra_body={"stop_token_ids": [9999]})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == 1
    assert forced not in (stopped.choices[0].message.content or "")
    penalized = chat(client, content="Repeat: la la la la la", presence_penalty=2.0, frequency_penalty=2.0)
    assert penalized.choices[0].message.content


def test_vllm_extras_and_ignore_eos(client: openai.OpenAI) -> None:
    extra = {"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "skip_special_tokens": True}
    response = chat(client, temperature=0.7, seed=3, extra_body=extra)
    assert response.choices[0].message.content
    short = chat(client, content="Hi", max_tokens=40)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 40
    long = chat(client, content="Hi", max_tokens=40, extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 40 and long.choices[0].finish_reason == "length"
    assert long.choices[0].message.content.startswith(short.choices[0].message.content)
    assert "<|im_end|>" not in long.choices[0].message.content


def test_message_shapes_and_unknown_fields(client: openai.OpenAI) -> None:
    messages = [
        {"role": "developer", "content": "You answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": '{"expr": "2+2"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "user", "content": "So?", "name": "bob"},
    ]
    response = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=8,
        user="u-1",
        extra_body={"some_future_field": {"x": 1}, "store": False, "metadata": {"a": "b"}},
        tools=[{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}],
        tool_choice="auto",
        parallel_tool_calls=False,
        response_format={"type": "text"},
    )
    assert response.choices[0].message.role == "assistant"


@pytest.mark.anyio
async def test_async_client_stream_and_concurrency(async_client: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> str:
        response = await async_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=12, temperature=0
        )
        return response.choices[0].message.content

    results = await asyncio.gather(*(one(i) for i in range(4)))
    assert all(results)
    stream = await async_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True, max_tokens=8
    )
    pieces = [chunk async for chunk in stream]
    assert pieces[0].choices[0].delta.role == "assistant"


def test_sdk_stream_helper_accumulates(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=10, temperature=0
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content == chat(client, content="Hi", max_tokens=10).choices[0].message.content
