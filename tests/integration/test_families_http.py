"""Per-family adapters through the REAL HTTP server (issue 3 acceptance).

Every tiny family model (tests/adapters/tiny_models.py: real vocab sizes and special-token ids, random
weights) is built once per session and served from ONE `python -m gateway serve --models-file` process,
next to a few deliberately odd entries (a model that fails to load, an unknown family, a template-less
model, a chat-template override). Stopping is checked by forcing tokens with the request's `logit_bias`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import tokenizer_fixture
from tests.integration.conftest import STARTUP_TIMEOUT, RunningServer, start_server, stop_server

USER = [{"role": "user", "content": "Hi"}]
SYSTEM_USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
FORCE = 100.0  # logit_bias that makes the token win over any logit of a random tiny model
MODERATE = 30.0  # still far above the tiny models' logits (|logit| < 1), but not the ±100 extreme
OVERRIDE_TEMPLATE = "SYSTEM-OVERRIDE {% for message in messages %}{{ message['content'] }}{% endfor %}"


@dataclass(frozen=True)
class FamilyCase:
    name: str  # served model id = directory name = the tiny_models family key
    family: str  # what details.family must say
    stop_id: int  # the family's end-of-turn token
    stop_text: str
    other_id: int  # a special token that is NOT a stop token
    other_text: str
    chat: bool = True  # False: completion-only (no chat template), tested through /v1/completions


CASES = [
    FamilyCase("qwen2", "qwen2", 151645, "<|im_end|>", 151644, "<|im_start|>"),
    FamilyCase("phi4", "phi4", 100265, "<|im_end|>", 100264, "<|im_start|>"),
    # the ORIGINAL Dec-2024 tokenizer (eos <|endoftext|> 100257): must still stop on <|im_end|>
    FamilyCase("phi4-original", "phi4", 100265, "<|im_end|>", 100264, "<|im_start|>"),
    FamilyCase("mistral", "mistral", 2, "</s>", 1, "<s>"),
    FamilyCase("llama2", "llama2", 2, "</s>", 1, "<s>", chat=False),  # base Llama-2: no chat template
    FamilyCase("openelm", "openelm", 2, "</s>", 1, "<s>"),
    FamilyCase("deepseek_v2", "deepseek_v2", 100001, "<｜end▁of▁sentence｜>", 100000, "<｜begin▁of▁sentence｜>"),
    # the April-2024 Llama-3 files only say eos <|end_of_text|>: <|eot_id|> must come from the adapter
    FamilyCase("llama3", "llama3", 128009, "<|eot_id|>", 128006, "<|start_header_id|>"),
    FamilyCase("llama3.1", "llama3.1", 128009, "<|eot_id|>", 128006, "<|start_header_id|>"),
    # early gemma-2 generation_config lists only <eos>: <end_of_turn> 107 must come from the adapter
    FamilyCase("gemma2", "gemma2", 107, "<end_of_turn>", 106, "<start_of_turn>"),
    FamilyCase("gemma3", "gemma3", 106, "<end_of_turn>", 105, "<start_of_turn>"),
    FamilyCase("phi3", "phi3", 32007, "<|end|>", 32010, "<|user|>"),
    FamilyCase("smollm2", "smollm2", 2, "<|im_end|>", 1, "<|im_start|>"),
]
CASE_IDS = [case.name for case in CASES]
CHAT_CASES = [case for case in CASES if case.chat]
SMOLLM2_MAX_CONTEXT = 512  # one entry sets max_context, to see it win over the config in max_model_len

# The extra entries beside the families.
OPENELM_NO_TOKENIZER = "openelm-no-tokenizer"  # the stand-in dir, family forced, no tokenizer configured
OPENELM_CONFIG_ONLY = "openelm-real-config"  # the real OpenELM config.json (detected, not forced), no tokenizer
BROKEN = (OPENELM_NO_TOKENIZER, OPENELM_CONFIG_ONLY)
GENERIC_CHAT = "mystery-chat"  # unknown family, tokenizer with a chat template
GENERIC_BASE = "mystery-base"  # unknown family, tokenizer without one
GPT2 = "gpt2"
GPT2_PLAIN = "gpt2-plain"
QWEN2_OVERRIDE = "qwen2-override"

# The unknown family: a Llama architecture (config matches several families) whose tokenizer has neither
# <s> nor <|im_start|> as bos and none of the vocabulary probes, under a name no pattern matches.
GENERIC_SPECIALS = {"<|bos|>": 0, "<|eot|>": 1, "<|turn|>": 2}
GENERIC_TEMPLATE = (
    "{% for message in messages %}<|turn|>{{ message['role'] }} {{ message['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|turn|>assistant {% endif %}"
)


def _generic_tokenizer(chat_template: str | bool) -> Any:
    from tests.adapters.tiny_tokenizers import TinySpec, build_tiny_tokenizer

    spec = TinySpec(family="mystery", specials=GENERIC_SPECIALS, vocab_size=64, bos="<|bos|>", eos="<|eot|>")
    return build_tiny_tokenizer(spec, chat_template=chat_template)


def _build_models(root: Path) -> list[dict[str, Any]]:
    """Every model directory, and the models-file entries serving them (the first one is the default)."""
    from tests.adapters.tiny_models import build_family_model, build_tiny_model

    entries: list[dict[str, Any]] = []
    for case in CASES:
        model_dir = build_family_model(case.name, root / case.name)
        entry: dict[str, Any] = {"name": case.name, "source": str(model_dir)}
        if case.name == "openelm":
            # tiny_models' OpenELM is a NATIVE Llama stand-in (the remote OpenELM code cannot load offline):
            # no tokenizer files, like a real checkpoint, so the family is forced and Llama-2's tokenizer given.
            entry.update(family="openelm", tokenizer=str(tokenizer_fixture("llama2")))
        if case.name == "smollm2":
            entry["max_context"] = SMOLLM2_MAX_CONTEXT
        entries.append(entry)

    gpt2_dir = build_family_model("gpt2", root / "gpt2")
    entries += [
        {"name": GPT2, "source": str(gpt2_dir)},
        {"name": GPT2_PLAIN, "source": str(gpt2_dir), "plain_chat_template": True},
    ]

    generic_dir = build_tiny_model(
        _generic_tokenizer(GENERIC_TEMPLATE),
        root / GENERIC_CHAT,
        config={"model_type": "llama", "architectures": ["LlamaForCausalLM"], "bos_token_id": 0, "eos_token_id": 1},
    )
    bare_tokenizer = root / "mystery-tokenizer-without-template"
    _generic_tokenizer(False).save_pretrained(bare_tokenizer)
    entries += [
        {"name": GENERIC_CHAT, "source": str(generic_dir)},
        {"name": GENERIC_BASE, "source": str(generic_dir), "tokenizer": str(bare_tokenizer)},
    ]

    template = root / "override.jinja"
    template.write_text(OVERRIDE_TEMPLATE, encoding="utf-8")
    entries.append({"name": QWEN2_OVERRIDE, "source": str(root / "qwen2"), "chat_template": str(template)})

    # Last: the models that must fail to load (the server has to stay up and keep serving the others).
    entries.append({"name": OPENELM_NO_TOKENIZER, "source": str(root / "openelm"), "family": "openelm"})
    config_only = root / OPENELM_CONFIG_ONLY
    config_only.mkdir()
    for name in ("config.json", "generation_config.json"):
        (config_only / name).write_bytes((tokenizer_fixture("openelm-270m") / name).read_bytes())
    entries.append({"name": OPENELM_CONFIG_ONLY, "source": str(config_only)})
    for entry in entries:  # the good ones load at start (readiness waits for them); the broken ones on demand
        entry["preload"] = entry["name"] not in BROKEN
    return entries


@dataclass
class FamilyServer:
    server: RunningServer
    root: Path
    entries: dict[str, dict[str, Any]]

    @property
    def url(self) -> str:
        return self.server.url

    def card(self, model_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/models/{model_id}", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()


def _wait_until_settled(server: RunningServer, names: list[str]) -> None:
    """/health/ready waits for the preload models; the broken ones are loaded (and fail) by a first request
    that waits for the load (x-wait-for-model) before the tests look at them."""
    for name in BROKEN:
        body = {"model": name, "messages": USER, "max_tokens": 1}
        httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"x-wait-for-model": "true"}, timeout=300)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        states = {n: httpx.get(f"{server.url}/v1/models/{n}", timeout=10).json().get("status") for n in names}
        if "loading" not in states.values():
            return
        if server.process.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"models still loading: {states}\n{server.log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def family_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FamilyServer]:
    root = tmp_path_factory.mktemp("family-models")
    entries = _build_models(root)
    models_file = root / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": entries}), encoding="utf-8")
    running = start_server(root, "--models-file", str(models_file), "--device", "cpu")
    try:
        _wait_until_settled(running, [entry["name"] for entry in entries])
        yield FamilyServer(running, root, {entry["name"]: entry for entry in entries})
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def client(family_server: FamilyServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{family_server.url}/v1", api_key="x", max_retries=0, timeout=60)


def envelope(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def _chat(client: openai.OpenAI, model: str, bias: dict[int, float], max_tokens: int, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=SYSTEM_USER,
        temperature=0,
        max_tokens=max_tokens,
        logit_bias={str(token): value for token, value in bias.items()},
        **kwargs,
    )


def _stream_chat(client: openai.OpenAI, model: str, bias: dict[int, float], max_tokens: int) -> tuple[str, str, Any]:
    """(content, finish_reason, usage) of a streamed chat completion."""
    content, finish, usage = "", None, None
    for chunk in _chat(client, model, bias, max_tokens, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return content, finish, usage


def _complete(client: openai.OpenAI, model: str, bias: dict[int, float], max_tokens: int) -> Any:
    return client.completions.create(
        model=model,
        prompt="Hello",
        temperature=0,
        max_tokens=max_tokens,
        logit_bias={str(token): value for token, value in bias.items()},
    )


def _stream_complete(
    client: openai.OpenAI, model: str, bias: dict[int, float], max_tokens: int
) -> tuple[str, str, Any]:
    content, finish, usage = "", None, None
    stream = client.completions.create(
        model=model,
        prompt="Hello",
        temperature=0,
        max_tokens=max_tokens,
        logit_bias={str(token): value for token, value in bias.items()},
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content += choice.text or ""
            finish = choice.finish_reason or finish
    return content, finish, usage


def _no_marker(text: str, *markers: str) -> None:
    for marker in markers:
        assert marker not in text, f"special token text {marker!r} leaked into {text!r}"


# ---- 1. stopping at the family's end-of-turn token, stream and non-stream ---------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forced_end_of_turn_stops(client: openai.OpenAI, case: FamilyCase) -> None:
    bias = {case.stop_id: FORCE}
    if case.chat:
        response = _chat(client, case.name, bias, max_tokens=8)
        content = response.choices[0].message.content
    else:
        response = _complete(client, case.name, bias, max_tokens=8)
        content = response.choices[0].text
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens == 1
    assert content == ""
    _no_marker(content, case.stop_text, case.other_text)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forced_end_of_turn_stops_streaming(client: openai.OpenAI, case: FamilyCase) -> None:
    stream = _stream_chat if case.chat else _stream_complete
    content, finish, usage = stream(client, case.name, {case.stop_id: FORCE}, 8)
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 1
    assert content == ""
    _no_marker(content, case.stop_text, case.other_text)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forced_non_stop_special_token_is_skipped_and_runs_to_length(client: openai.OpenAI, case: FamilyCase) -> None:
    bias = {case.other_id: MODERATE}
    if case.chat:
        response = _chat(client, case.name, bias, max_tokens=3)
        content = response.choices[0].message.content
        streamed, stream_finish, _ = _stream_chat(client, case.name, bias, 3)
    else:
        response = _complete(client, case.name, bias, max_tokens=3)
        content = response.choices[0].text
        streamed, stream_finish, _ = _stream_complete(client, case.name, bias, 3)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3
    assert stream_finish == "length"
    _no_marker(content, case.other_text, case.stop_text)
    _no_marker(streamed, case.other_text, case.stop_text)


def test_skip_special_tokens_false_shows_specials_but_never_the_stop_token(client: openai.OpenAI) -> None:
    response = _chat(client, "qwen2", {151644: MODERATE}, max_tokens=2, extra_body={"skip_special_tokens": False})
    assert response.choices[0].finish_reason == "length"
    assert response.choices[0].message.content == "<|im_start|><|im_start|>"
    response = _chat(client, "qwen2", {151645: FORCE}, max_tokens=8, extra_body={"skip_special_tokens": False})
    assert (response.choices[0].finish_reason, response.choices[0].message.content) == ("stop", "")


def test_llama31_also_stops_on_eom(client: openai.OpenAI) -> None:
    response = _chat(client, "llama3.1", {128008: FORCE}, max_tokens=8)  # <|eom_id|>
    assert (response.choices[0].finish_reason, response.usage.completion_tokens) == ("stop", 1)
    assert response.choices[0].message.content == ""


# ---- 2. Phi-4 with the original tokenizer -----------------------------------------------------------------


def test_phi4_original_tokenizer_stops_on_im_end(family_server: FamilyServer, client: openai.OpenAI) -> None:
    original = json.loads((tokenizer_fixture("phi4-original") / "tokenizer_config.json").read_text())
    assert original["eos_token"] == "<|endoftext|>"  # the release that never stopped
    details = family_server.card("phi4-original")["details"]
    assert details["family"] == "phi4"
    assert details["eos_token_id"] == 100265
    assert {100265, 100257} <= set(details["stop_token_ids"])
    assert details["pad_token_id"] == 100349 and details["pad_token_id"] not in details["stop_token_ids"]
    for token in (100265, 100257):
        response = _chat(client, "phi4-original", {token: FORCE}, max_tokens=8)
        assert (response.choices[0].finish_reason, response.usage.completion_tokens) == ("stop", 1)
        assert response.choices[0].message.content == ""


# ---- 3. OpenELM: no tokenizer files + the configured Llama-2 tokenizer; without one a clear failure -------


def test_openelm_serves_with_configured_llama2_tokenizer(family_server: FamilyServer, client: openai.OpenAI) -> None:
    model_dir = Path(family_server.entries["openelm"]["source"])
    assert not any(p.name.startswith(("tokenizer", "special_tokens")) for p in model_dir.iterdir())
    card = family_server.card("openelm")
    assert card["status"] == "ready"
    details = card["details"]
    assert details["family"] == "openelm" and details["needs_external_tokenizer"] is True
    assert details["template_source"] == "adapter openelm"
    assert 2 in details["stop_token_ids"]
    response = client.chat.completions.create(model="openelm", messages=SYSTEM_USER, max_tokens=4, temperature=0)
    assert response.choices[0].finish_reason in {"stop", "length"}
    assert response.usage.prompt_tokens > 0


@pytest.mark.parametrize("model", [OPENELM_NO_TOKENIZER, OPENELM_CONFIG_ONLY])
def test_openelm_without_tokenizer_fails_clearly_and_server_stays_up(
    family_server: FamilyServer, client: openai.OpenAI, model: str
) -> None:
    card = family_server.card(model)
    assert card["status"] == "failed"
    assert "max_model_len" not in card
    error = card["details"]["error"]
    assert "ships no tokenizer" in error and "--tokenizer" in error and "Llama-2" in error, error

    response = httpx.post(
        f"{family_server.url}/v1/chat/completions", json={"model": model, "messages": USER}, timeout=30
    )
    assert response.status_code == 503, response.text
    body = envelope(response)
    assert body["code"] == "model_not_ready"
    assert "failed to load" in body["message"] and "ships no tokenizer" in body["message"]
    assert response.headers.get("x-should-retry") == "false"

    assert httpx.get(f"{family_server.url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{family_server.url}/health/ready", timeout=10).status_code == 200
    ok = client.chat.completions.create(model="qwen2", messages=USER, max_tokens=2, temperature=0)
    assert ok.choices[0].finish_reason in {"stop", "length"}


# ---- 4. /v1/models/{id}: family and context length --------------------------------------------------------


def _config_context(model_dir: Path) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    return next(config[key] for key in ("max_position_embeddings", "n_positions") if key in config)


@pytest.mark.parametrize(
    ("model", "family"),
    [(case.name, case.family) for case in CASES]
    + [(GPT2, "gpt2"), (GPT2_PLAIN, "gpt2"), (GENERIC_CHAT, "generic"), (GENERIC_BASE, "generic")]
    + [(QWEN2_OVERRIDE, "qwen2")],
)
def test_model_card_shows_family_and_max_model_len(family_server: FamilyServer, model: str, family: str) -> None:
    card = family_server.card(model)
    assert card["id"] == model and card["status"] == "ready"
    assert card["details"]["family"] == family
    entry = family_server.entries[model]
    expected = entry.get("max_context") or _config_context(Path(entry["source"]))
    assert card["max_model_len"] == card["details"]["context_length"] == expected
    listed = httpx.get(f"{family_server.url}/v1/models", timeout=10).json()["data"]
    assert model in {item["id"] for item in listed}


# ---- 5. unknown family (generic adapter), template-less models, plain template opt-in ---------------------


def test_unknown_family_with_template_uses_generic_adapter(family_server: FamilyServer, client: openai.OpenAI) -> None:
    details = family_server.card(GENERIC_CHAT)["details"]
    assert details["family"] == "generic" and details["template_source"] == "tokenizer" and details["chat"] is True
    assert 1 in details["stop_token_ids"]  # the tokenizer's own eos <|eot|>
    response = client.chat.completions.create(model=GENERIC_CHAT, messages=USER, max_tokens=3, temperature=0)
    assert response.choices[0].finish_reason in {"stop", "length"}
    # "<|turn|>user Hi<|eot|><|turn|>assistant " → 6 tokens, no BOS added by this tokenizer
    assert response.usage.prompt_tokens == 6
    forced = _chat(client, GENERIC_CHAT, {1: FORCE}, max_tokens=8)
    assert (forced.choices[0].finish_reason, forced.usage.completion_tokens) == ("stop", 1)
    assert forced.choices[0].message.content == ""


@pytest.mark.parametrize("model", [GPT2, GENERIC_BASE])
def test_model_without_chat_template_is_completion_only(
    family_server: FamilyServer, client: openai.OpenAI, model: str
) -> None:
    details = family_server.card(model)["details"]
    assert details["chat"] is False and details["template_source"] == "none (completion-only)"
    response = httpx.post(
        f"{family_server.url}/v1/chat/completions", json={"model": model, "messages": USER}, timeout=30
    )
    assert response.status_code == 400, response.text
    error = envelope(response)
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    assert "no chat template" in error["message"] and "/v1/completions" in error["message"]

    completion = client.completions.create(model=model, prompt="Hello", max_tokens=3, temperature=0)
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert completion.usage.completion_tokens >= 1


def test_plain_chat_template_opt_in_serves_chat(family_server: FamilyServer, client: openai.OpenAI) -> None:
    details = family_server.card(GPT2_PLAIN)["details"]
    assert details["chat"] is True and details["template_source"].startswith("plain concatenation")
    response = client.chat.completions.create(model=GPT2_PLAIN, messages=SYSTEM_USER, max_tokens=3, temperature=0)
    assert response.choices[0].finish_reason in {"stop", "length"}
    forced = _chat(client, GPT2_PLAIN, {50256: FORCE}, max_tokens=8)  # <|endoftext|>
    assert (forced.choices[0].finish_reason, forced.usage.completion_tokens) == ("stop", 1)
    assert forced.choices[0].message.content == ""


# ---- 6. chat_template override in the models file ---------------------------------------------------------


def test_chat_template_override_changes_the_prompt(family_server: FamilyServer, client: openai.OpenAI) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_fixture("qwen2.5-instruct"))
    assert family_server.card(QWEN2_OVERRIDE)["details"]["template_source"] == "operator override"
    assert family_server.card("qwen2")["details"]["template_source"] == "tokenizer"

    def prompt_tokens(model: str) -> int:
        response = client.chat.completions.create(model=model, messages=SYSTEM_USER, max_tokens=1, temperature=0)
        return response.usage.prompt_tokens

    own = tokenizer.apply_chat_template(SYSTEM_USER, add_generation_prompt=True, tokenize=False)
    assert prompt_tokens("qwen2") == len(tokenizer.encode(own))
    overridden = tokenizer.encode("SYSTEM-OVERRIDE Be brief.Hi")
    assert prompt_tokens(QWEN2_OVERRIDE) == len(overridden) != len(tokenizer.encode(own))
