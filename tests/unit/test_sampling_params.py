"""Request fields → SamplingParams as the engine sees them; the chat logprobs wire shape (compat §2.1, §9 11)."""

from __future__ import annotations

import pytest

from gateway.engine.factory import model_max_tokens
from gateway.engine.fake import FakeEngine
from gateway.models import ServedModel
from gateway.services.params import budget
from gateway.settings import EMBEDDED_DEFAULT_MAX_TOKENS, EMBEDDED_MODEL, ModelSpec, Settings
from tests.unit.helpers import MODEL, QWEN_EOS, make_settings, open_gateway, qwen_pipeline, sse_events

pytestmark = pytest.mark.anyio


async def params_for(gw, **body):
    r = await gw.chat(**body)
    assert r.status_code == 200, r.text
    return [req.params for req in gw.engine.requests[-(body.get("n") or 1) :]]


async def test_defaults(gw):
    [p] = await params_for(gw)
    assert p.temperature == 1.0 and p.top_p == 1.0 and p.top_k == 0 and p.min_p == 0.0
    assert p.seed is None and p.logprobs is None and p.logit_bias == ()
    assert p.stop_token_ids == qwen_pipeline().stop_token_ids
    assert set(QWEN_EOS) <= p.stop_token_ids
    assert p.max_new_tokens == 4096 - len(gw.engine.requests[-1].prompt_ids)


async def test_default_max_tokens_setting_caps_budget():
    async with open_gateway(settings=make_settings(default_max_tokens=7)) as gw:
        [p] = await params_for(gw)
        assert p.max_new_tokens == 7
        [p] = await params_for(gw, max_tokens=20)
        assert p.max_new_tokens == 20
        await gw.completion(prompt="x", max_tokens=None)  # an explicit null is the default: OpenAI's 16
        assert gw.engine.requests[-1].params.max_new_tokens == 16
        await gw.completion(prompt="x")  # unset: the same
        assert gw.engine.requests[-1].params.max_new_tokens == 16
        card = (await gw.client.get(f"/v1/models/{MODEL}")).json()
        assert card["details"]["default_max_tokens"] == 7


def model_with_caps(spec_cap: int | None, model_cap: int | None) -> ServedModel:
    spec = ModelSpec(name="m", source="x", default_max_tokens=spec_cap)
    return ServedModel(
        spec, qwen_pipeline(), FakeEngine(), context_length=100, vocab_size=10, model_max_tokens=model_cap
    )


def test_the_spec_cap_wins_over_the_models_own_and_zero_means_the_window():
    assert budget(10, None, model_with_caps(None, None), noun="prompt") == 90  # no cap anywhere: the rest
    assert budget(10, None, model_with_caps(None, 30), noun="prompt") == 30  # the model's own (e.g. embedded)
    assert budget(10, None, model_with_caps(50, 30), noun="prompt") == 50  # the setting wins
    assert budget(10, None, model_with_caps(0, 30), noun="prompt") == 90  # 0 = the whole window
    assert budget(80, None, model_with_caps(None, 30), noun="prompt") == 20  # a cap never passes the window
    assert budget(10, 70, model_with_caps(None, 30), noun="prompt") == 70  # the request's own value wins
    assert model_with_caps(0, 30).describe()["default_max_tokens"] is None


def test_embedded_model_gets_a_small_cap_and_generation_config_is_read():
    embedded = ModelSpec(name="e", source=EMBEDDED_MODEL)
    assert model_max_tokens(embedded, {}) == EMBEDDED_DEFAULT_MAX_TOKENS <= 512
    assert model_max_tokens(ModelSpec(name="o", source="org/other"), {}) is None
    assert model_max_tokens(ModelSpec(name="o", source="org/other"), {"max_new_tokens": 300, "max_length": 20}) == 300


def test_models_file_entries_fall_back_to_the_server_wide_cap(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - {name: a, source: embedded, default_max_tokens: 64}\n  - {name: b, source: /m/b}\n",
        encoding="utf-8",
    )
    specs = Settings(_env_file=None, models_file=path, default_max_tokens=500).model_specs()
    assert [s.default_max_tokens for s in specs] == [64, 500]
    specs = Settings(_env_file=None, models_file=path).model_specs()
    assert [s.default_max_tokens for s in specs] == [64, None]
    assert Settings(_env_file=None, default_max_tokens=9).single_model_spec().default_max_tokens == 9


async def test_temperature_zero_is_greedy(gw):
    [p] = await params_for(gw, temperature=0)
    assert p.temperature == 0.0
    assert p.greedy
    [p] = await params_for(gw, temperature=0.7)
    assert p.temperature == pytest.approx(0.7)
    assert not p.greedy


async def test_max_completion_tokens_wins_over_max_tokens(gw):
    [p] = await params_for(gw, max_tokens=50, max_completion_tokens=5)
    assert p.max_new_tokens == 5
    [p] = await params_for(gw, max_tokens=9)
    assert p.max_new_tokens == 9
    [p] = await params_for(gw, max_completion_tokens=11)
    assert p.max_new_tokens == 11


async def test_seed_with_n3_gives_consecutive_seeds(gw):
    params = await params_for(gw, seed=1234, n=3)
    assert sorted(p.seed for p in params) == [1234, 1235, 1236]
    params = await params_for(gw, seed=None, n=2)
    assert [p.seed for p in params] == [None, None]


async def test_stop_token_ids_union_with_model_stops(gw):
    [p] = await params_for(gw, stop_token_ids=[7, 42])
    assert p.stop_token_ids == frozenset({7, 42, *QWEN_EOS})


async def test_ignore_eos_drops_model_stops(gw):
    [p] = await params_for(gw, ignore_eos=True)
    assert p.stop_token_ids == frozenset()
    [p] = await params_for(gw, ignore_eos=True, stop_token_ids=[7])
    assert p.stop_token_ids == frozenset({7})


async def test_logit_bias_keys_parsed_to_ints(gw):
    [p] = await params_for(gw, logit_bias={"42": 5, "100": -100})
    assert sorted(p.logit_bias) == [(42, 5.0), (100, -100.0)]
    assert all(isinstance(token, int) for token, _ in p.logit_bias)


async def test_vllm_extras_and_penalties_passed(gw):
    [p] = await params_for(
        gw,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        top_p=0.9,
        skip_special_tokens=False,
    )
    assert p.top_k == 40
    assert p.min_p == pytest.approx(0.05)
    assert p.repetition_penalty == pytest.approx(1.1)
    assert p.presence_penalty == pytest.approx(0.5)
    assert p.frequency_penalty == pytest.approx(-0.25)
    assert p.top_p == pytest.approx(0.9)
    assert p.skip_special_tokens is False


async def test_nullable_fields_are_accepted_as_defaults(gw):
    [p] = await params_for(gw, seed=None, logprobs=None, temperature=None, stop=None, top_p=None, n=None)
    assert p.temperature == 1.0 and p.logprobs is None and p.seed is None


async def test_logprobs_flag_and_top_logprobs(gw):
    [p] = await params_for(gw, logprobs=True, top_logprobs=3)
    assert p.logprobs == 3
    [p] = await params_for(gw, logprobs=True)
    assert p.logprobs == 0
    [p] = await params_for(gw, logprobs=False)
    assert p.logprobs is None


async def test_logprobs_response_shape(gw):
    body = (await gw.chat(logprobs=True, top_logprobs=2)).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [item["token"] for item in content] == ["Hello", " world", "!"]
    for item in content:
        assert set(item) >= {"token", "logprob", "bytes", "top_logprobs"}
        assert isinstance(item["logprob"], float)
        assert item["bytes"] == list(item["token"].encode("utf-8"))
        assert len(item["top_logprobs"]) == 2
        for alt in item["top_logprobs"]:
            assert set(alt) >= {"token", "logprob", "bytes"}
            assert alt["bytes"] == list(alt["token"].encode("utf-8"))
    # off: logprobs is null on the choice
    assert (await gw.chat()).json()["choices"][0]["logprobs"] is None


async def test_logprobs_in_stream_chunks(gw):
    events = sse_events((await gw.chat(stream=True, logprobs=True, top_logprobs=1)).text)
    items = [item for e in events for c in e["choices"] if c.get("logprobs") for item in c["logprobs"]["content"]]
    assert [item["token"] for item in items] == ["Hello", " world", "!"]
    assert all(len(item["top_logprobs"]) == 1 for item in items)


async def test_completion_tokens_with_max_tokens_two():
    async with open_gateway(FakeEngine(pieces=["x", "y", "z"])) as gw:
        body = (await gw.chat(max_tokens=2)).json()
        assert gw.engine.requests[0].params.max_new_tokens == 2
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 2


async def test_constrained_output_skips_the_model_default_repetition_penalty():
    """JSON repeats its syntax by design: a model's default repetition penalty stays off under a grammar (a
    request's own value still applies)."""
    fmt = {"type": "json_object"}
    async with open_gateway() as gw:
        gw.app.state.registry.default.served.sampling_defaults = {"repetition_penalty": 1.1}
        [p] = await params_for(gw)
        assert p.repetition_penalty == 1.1
        [p] = await params_for(gw, response_format=fmt)
        assert p.repetition_penalty == 1.0
        [p] = await params_for(gw, response_format=fmt, repetition_penalty=1.3)
        assert p.repetition_penalty == 1.3
