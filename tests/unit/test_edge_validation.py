"""Every parameter validated before any work starts (issue 10): types without coercion, explicit null =
default, seed range, limits as settings, former 500s → 400, validation that used to run after a stream
had started, the greedy temperature floor. Always the OpenAI envelope, never a 5xx."""

from __future__ import annotations

import json

import pytest

from gateway.engine.admission import Admission, AdmittedEngine
from gateway.engine.fake import FakeEngine
from tests.unit.helpers import MODEL, USER, assert_envelope, make_settings, open_gateway

pytestmark = pytest.mark.anyio

INT64_MAX = 2**63 - 1


# ---- no silent coercion -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "8"),
        ("max_tokens", True),
        ("stream", "yes"),
        ("stream", 1),
        ("n", "2"),
        ("n", True),
        ("temperature", "0.5"),
        ("temperature", True),
        ("seed", "42"),
        ("logprobs", "true"),
        ("top_logprobs", "2"),
        ("stop_token_ids", ["5"]),
        ("logit_bias", {"5": "1"}),
        ("ignore_eos", "false"),
    ],
)
async def test_chat_strings_and_booleans_are_not_coerced(gw, field, value):
    error = assert_envelope(await gw.chat(**{field: value}), 400, error_type="invalid_request_error")
    assert error["param"] == field or error["param"].startswith(f"{field}.")
    assert gw.engine.requests == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("prompt", [True, False]), ("prompt", [[1, True]]), ("max_tokens", "8"), ("echo", "yes"), ("logprobs", "1")],
)
async def test_completion_strings_and_booleans_are_not_coerced(gw, field, value):
    body = {"prompt": "hi", field: value}
    error = assert_envelope(await gw.completion(**body), 400)
    assert error["param"] == field or error["param"].startswith(f"{field}.")
    assert gw.engine.requests == []


async def test_what_real_clients_send_stays_accepted(gw):
    # ints for floats, integral floats for ints, unknown fields
    r = await gw.chat(temperature=1, top_p=1, presence_penalty=0, logit_bias={"5": 1}, max_tokens=8.0, n=2.0)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 2
    assert gw.engine.requests[0].params.max_new_tokens == 8
    assert (await gw.chat(max_tokens=8.5)).status_code == 400


# ---- explicit null means the default --------------------------------------------------------------------


async def test_explicit_null_is_the_default():
    engine = FakeEngine(pieces=["x"] * 40)
    async with open_gateway(engine) as gw:
        r = await gw.completion(prompt="hi", max_tokens=None, n=None, stream=None, echo=None, logprobs=None)
        assert r.status_code == 200, r.text
        assert engine.requests[-1].params.max_new_tokens == 16  # not the rest of the context window
        assert len(r.json()["choices"]) == 1 and r.json()["choices"][0]["text"] == "x" * 16
        r = await gw.chat(n=None, stream=None, logprobs=None, skip_special_tokens=None, ignore_eos=None)
        assert r.status_code == 200, r.text
        params = engine.requests[-1].params
        assert params.skip_special_tokens is True and r.json()["choices"][0]["logprobs"] is None


# ---- seed -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [2**64, 18446744073709551616, -(2**70), 2**63])
async def test_seed_outside_int64_is_400(gw, seed):
    assert_envelope(await gw.chat(seed=seed), 400, param="seed")
    assert_envelope(await gw.completion(prompt="hi", seed=seed, stream=True), 400, param="seed")
    assert gw.engine.requests == []


@pytest.mark.parametrize("seed", [INT64_MAX, -(2**63)])
async def test_every_per_choice_seed_fits_torch(gw, seed):
    """seed + i for i < n (n ≤ 128) must be a seed torch.Generator accepts: that overflow failed a batch."""
    from gateway.engine.logits import request_generator

    r = await gw.chat(seed=seed, n=128, temperature=1)
    assert r.status_code == 200, r.text
    seeds = sorted(request.params.seed for request in gw.engine.requests)
    assert seeds == [seed + i for i in range(128)]
    for request in gw.engine.requests[:: len(gw.engine.requests) - 1]:  # the two ends of the range
        generator = request_generator(request.params, __import__("torch").device("cpu"))
        assert generator is not None and generator.initial_seed() == request.params.seed % 2**64


# ---- greedy floor -----------------------------------------------------------------------------------------


async def test_tiny_temperature_is_greedy(gw):
    for temperature in (1e-300, 1e-6):
        assert (await gw.chat(temperature=temperature)).status_code == 200
        params = gw.engine.requests[-1].params
        assert params.temperature == 0.0 and params.greedy
    assert (await gw.chat(temperature=0.5)).status_code == 200
    assert gw.engine.requests[-1].params.temperature == 0.5


# ---- former 500s ------------------------------------------------------------------------------------------


async def post_ascii_json(gw, path: str, body: dict, **extra):
    """JSON with \\uXXXX escapes, as json.dumps writes it: the way a lone surrogate travels on the wire
    (httpx's own `json=` cannot encode one)."""
    body = {"model": MODEL, **body, **extra}
    return await gw.client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


async def test_lone_surrogate_is_400_in_both_routes(gw):
    completions, chat = "/v1/completions", "/v1/chat/completions"
    error = assert_envelope(await post_ascii_json(gw, completions, {"prompt": "\ud800"}), 400, param="prompt")
    assert "surrogate" in error["message"]
    r = await post_ascii_json(gw, completions, {"prompt": ["ok", "a\udfffb"], "stream": True})
    assert_envelope(r, 400, param="prompt")
    messages = [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]
    error = assert_envelope(await post_ascii_json(gw, chat, {"messages": messages}), 400, param="messages")
    assert "messages.0.content.0.text" in error["message"]
    r = await post_ascii_json(gw, chat, {"messages": USER, "stop": ["\udc00"]})
    assert_envelope(r, 400, param="stop")
    assert gw.engine.requests == []
    # a surrogate pair is a real character (😀) and stays fine
    r = await post_ascii_json(gw, completions, {"prompt": "\ud83d\ude00"})
    assert r.status_code == 200, r.text


async def test_json_schema_that_is_not_an_object_is_400(gw):
    for spec in ("x", 5, ["schema"]):
        fmt = {"type": "json_schema", "json_schema": spec}
        assert_envelope(await gw.chat(response_format=fmt), 400, param="response_format")


async def test_tool_choice_function_that_is_not_an_object_is_400(gw):
    tools = [{"type": "function", "function": {"name": "f"}}]  # no parameters
    for choice in ({"type": "function", "function": "f"}, {"type": "function"}, {"type": "function", "function": {}}):
        assert_envelope(await gw.chat(tools=tools, tool_choice=choice), 400, param="tool_choice")


@pytest.mark.parametrize("stream", [False, True])
async def test_bad_token_ids_are_400_before_the_stream_starts(gw, stream):
    assert_envelope(await gw.chat(logit_bias={"-5": 1}, stream=stream), 400, param="logit_bias")
    assert_envelope(await gw.chat(stop_token_ids=[10**9], stream=stream), 400, param="stop_token_ids")
    assert_envelope(await gw.completion(prompt="hi", logit_bias={"x": 1}, stream=stream), 400, param="logit_bias")
    assert gw.engine.requests == []


# ---- limits as settings --------------------------------------------------------------------------------


async def test_prompt_characters_are_bounded_before_tokenizing():
    async with open_gateway(settings=make_settings(max_prompt_chars=100)) as gw:
        long = "x" * 101
        error = assert_envelope(await gw.chat(messages=[{"role": "user", "content": long}]), 400, param="messages")
        assert error["code"] == "limit_exceeded" and "exceeds the limit of 100" in error["message"]
        split = [
            {"role": "system", "content": "x" * 60},
            {"role": "user", "content": [{"type": "text", "text": "y" * 41}]},
        ]
        assert_envelope(await gw.chat(messages=split), 400, param="messages", code="limit_exceeded")
        assert_envelope(await gw.completion(prompt=["x" * 50, "y" * 51]), 400, param="prompt", code="limit_exceeded")
        assert gw.engine.requests == []
        assert (await gw.chat(messages=[{"role": "user", "content": "x" * 100}])).status_code == 200


async def test_token_prompt_longer_than_the_context_is_refused_before_decoding():
    async with open_gateway(context_length=64) as gw:
        error = assert_envelope(await gw.completion(prompt=[5] * 65), 400, code="context_length_exceeded")
        assert "65 tokens" in error["message"]


async def test_stop_strings_are_bounded_in_length():
    async with open_gateway(settings=make_settings(max_stop_chars=8)) as gw:
        assert_envelope(await gw.chat(stop="123456789"), 400, param="stop", code="limit_exceeded")
        assert_envelope(await gw.completion(prompt="hi", stop=["ok", "x" * 9]), 400, param="stop")
        assert (await gw.chat(stop=["12345678"])).status_code == 200


def _tool(name: str, parameters: dict | None = None) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters or {"type": "object"}}}


async def test_tool_count_is_bounded():
    async with open_gateway(settings=make_settings(max_tools=2)) as gw:
        three = [_tool(f"f{i}") for i in range(3)]
        assert_envelope(await gw.chat(tools=three), 400, param="tools", code="limit_exceeded")
        assert (await gw.chat(tools=three[:2])).status_code == 200


def _nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


async def test_schema_shape_is_bounded_before_any_compile(gw):
    """300 levels gave a 500 RecursionError; a 5 MB enum froze the server while compiling. Both are refused
    by counting, so no grammar compiler is ever built here (served.grammar stays None)."""
    served = gw.app.state.registry.default.served
    deep = {"type": "json_schema", "json_schema": {"name": "d", "schema": _nested(300)}}
    assert_envelope(await gw.chat(response_format=deep), 400, param="response_format", code="limit_exceeded")
    # Nested far deeper than any JSON encoder in this process can write: sent as raw text.
    depth = 5000
    schema_text = '{"items":' * depth + '{"type":"string"}' + "}" * depth
    body = '{"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema",'
    body += '"json_schema":{"name":"d","schema":' + schema_text + "}}}"
    r = await gw.client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert_envelope(r, 400)
    # 3 MB: under the 4 MiB body limit (a 5 MB body is refused with 413 before it is parsed), far over the enum one
    big_enum = {"type": "object", "properties": {"a": {"enum": [f"value-{i}" for i in range(220_000)]}}}
    assert len(json.dumps(big_enum)) > 3_000_000
    fmt = {"type": "json_schema", "json_schema": {"name": "e", "schema": big_enum}}
    assert_envelope(await gw.chat(response_format=fmt), 400, param="response_format", code="limit_exceeded")
    tools = [_tool("f", {"type": "object", "properties": {"a": {"enum": list(range(2000))}}})]
    assert_envelope(await gw.chat(tools=tools, tool_choice="required"), 400, param="tools", code="limit_exceeded")
    assert served.grammar is None


async def test_offered_tools_count_as_prompt_text_and_only_forced_ones_as_schemas():
    """Agents offer many tools: with tool_choice auto they are prompt text (never compiled), so only a
    forced choice (required, or a named tool) is held to the schema limits."""
    tools = [
        _tool(f"f{i}", {"type": "object", "properties": {f"p{j}": {"type": "string"} for j in range(10)}})
        for i in range(40)
    ]
    async with open_gateway(settings=make_settings(max_schema_properties=50), context_length=32768) as gw:
        assert (await gw.chat(tools=tools)).status_code == 200  # 400 properties, offered
        assert_envelope(await gw.chat(tools=tools, tool_choice="required"), 400, param="tools", code="limit_exceeded")
        named = {"type": "function", "function": {"name": "f3"}}
        r = await gw.chat(tools=tools, tool_choice=named)
        assert r.status_code == 200, r.text  # 10 properties compiled
    async with open_gateway(settings=make_settings(max_prompt_chars=1000)) as gw:
        error = assert_envelope(await gw.chat(tools=tools), 400, param="messages", code="limit_exceeded")
        assert "tools" in error["message"]


async def test_schema_limits_are_settings():
    settings = make_settings(max_schema_enum=3, max_schema_depth=6, max_schema_properties=2, max_schema_bytes=200)
    async with open_gateway(settings=settings) as gw:

        def fmt(schema: dict) -> dict:
            return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}

        cases = {
            "enum": {"enum": ["a", "b", "c", "d"]},
            "depth": _nested(3),
            "properties": {"type": "object", "properties": {"a": {}, "b": {}, "c": {}}},
            "bytes": {"type": "object", "description": "x" * 200},
        }
        for name, schema in cases.items():
            error = assert_envelope(await gw.chat(response_format=fmt(schema)), 400, param="response_format")
            assert error["code"] == "limit_exceeded", name
        assert gw.app.state.registry.default.served.grammar is None


async def test_n_beyond_a_small_capacity_is_400_before_tokenizing():
    engine = AdmittedEngine(FakeEngine(), Admission(max_running=2, max_queued=2, name="m"))
    async with open_gateway(engine) as gw:  # type: ignore[arg-type]
        error = assert_envelope(await gw.chat(n=5), 400, param="n", code="limit_exceeded")
        assert "(2 running + 2 queued)" in error["message"]
        assert_envelope(await gw.completion(prompt=[[1], [2], [3], [4], [5]]), 400, param="prompt")
        assert (await gw.chat(n=4)).status_code == 200
