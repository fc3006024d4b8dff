"""A front gateway in front of a different OpenAI-compatible implementation: `transformers serve` on the
safetensors copy of the embedded SmolLM2 that Gantry itself caches (the copy the benchmark serves it too).
Real processes on 127.0.0.1.

That server ends its streams without `data: [DONE]` and answers a request it cannot handle with a bare
"Internal Server Error" (transformers ≤ 5.24) or a 400 `{"detail": ...}` (5.25 on); clients of the front still
get [DONE], our model id and the OpenAI error envelope. Each quirk is first checked straight at `transformers
serve`, so the test fails (rather than passes for nothing) the day that server stops having one of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from gateway.engine.loader import materialize
from gateway.settings import EMBEDDED_MODEL, EMBEDDED_MODEL_NAME, ModelSpec, Settings
from tests.integration.conftest import STARTUP_TIMEOUT, RunningServer, free_port, start_server, stop_server

NAME = "tserve-smol"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
BAD_FOR_TSERVE = {"logit_bias": {"50": 5}}  # valid OpenAI input that `transformers serve` refuses (see above)


@dataclass
class Servers:
    tserve_url: str  # transformers serve, straight
    tserve_model: str  # its model id: the directory it serves
    front: RunningServer


def start_transformers_serve(model_dir: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cli = Path(sys.executable).with_name("transformers")
    cmd = [str(cli), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--device", "cpu", "--dtype", "float32"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")} | {"HF_HUB_OFFLINE": "1"}
    log = (tmp / "transformers-serve.log").open("wb")
    process = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited:\n{(tmp / 'transformers-serve.log').read_text()[-4000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("transformers serve did not start")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("upstream-tserve")
    spec = ModelSpec(name=EMBEDDED_MODEL_NAME, source=EMBEDDED_MODEL)
    model_dir = materialize(spec, Settings(_env_file=None).cache_dir)  # dequantized once, then cached
    tserve, tserve_url = start_transformers_serve(model_dir, tmp)
    models = tmp / "models.yaml"
    models.write_text(
        f"""
models:
  - name: {NAME}
    kind: upstream
    owned_by: huggingface
    eject_after: 5  # the error tests' bare 500s must not take the one replica out for the later tests
    timeouts: {{first_token: 600, total: 900}}
    replicas: [{{url: "{tserve_url}", model: {json.dumps(str(model_dir))}}}]
""",
        encoding="utf-8",
    )
    front = start_server(tmp, "--models-file", str(models))
    yield Servers(tserve_url, str(model_dir), front)
    stop_server(front)
    tserve.terminate()
    tserve.wait(timeout=30)


@pytest.fixture
def client(servers: Servers) -> openai.OpenAI:
    return openai.OpenAI(base_url=servers.front.base_url, api_key="x", max_retries=0, timeout=600)


def data_lines(url: str, body: dict) -> list[str]:
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        assert response.status_code == 200, response.read()
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_listed_with_its_owner(servers: Servers) -> None:
    cards = {card["id"]: card for card in httpx.get(servers.front.base_url + "/models").json()["data"]}
    assert cards[NAME]["owned_by"] == "huggingface"


def test_streams_end_with_done_although_transformers_serve_sends_none(servers: Servers, client) -> None:
    body = {"messages": QUESTION, "max_tokens": 6, "temperature": 0, "stream": True}
    straight = data_lines(servers.tserve_url, {**body, "model": servers.tserve_model})
    assert straight and "[DONE]" not in straight  # the quirk this test is about
    relayed = data_lines(servers.front.url, {**body, "model": NAME})
    assert relayed[-1] == "[DONE]" and relayed.count("[DONE]") == 1
    chunks = [json.loads(line) for line in relayed[:-1]]
    assert all(chunk["model"] == NAME for chunk in chunks)
    # the SDK reads the relayed stream to the end: text and a finish reason
    parts = list(client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=6, stream=True))
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices).strip()
    assert any(p.choices and p.choices[0].finish_reason == "length" for p in parts)


def test_chat_and_completions_without_streaming(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=6, temperature=0)
    assert reply.model == NAME
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    completion = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=4)
    assert completion.model == NAME
    assert completion.choices[0].text


def test_its_error_answers_reach_the_client_as_the_envelope(servers: Servers, client: openai.OpenAI) -> None:
    body = {"messages": QUESTION, "max_tokens": 3, **BAD_FOR_TSERVE}
    straight = httpx.post(servers.tserve_url + "/v1/chat/completions", json={**body, "model": servers.tserve_model})
    if straight.status_code == 500:  # transformers <= 5.24: plain text, no error object -> the upstream's fault
        with pytest.raises(ValueError):
            straight.json()
        expected_status, expected_message = 502, None
    else:  # 5.25 on: the request's fault, FastAPI's {"detail": "..."} -> relayed with its status
        assert straight.status_code == 400, straight.text
        detail = straight.json()["detail"]
        assert isinstance(detail, str) and detail and "error" not in straight.json()
        expected_status, expected_message = 400, detail
    relayed = httpx.post(servers.front.base_url + "/chat/completions", json={**body, "model": NAME}, timeout=60)
    assert relayed.status_code == expected_status, relayed.text
    error = relayed.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert expected_message is None or error["message"] == expected_message
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=3, extra_body=BAD_FOR_TSERVE)
    assert caught.value.status_code == expected_status
    assert caught.value.body["message"]  # the SDK found the envelope's message


def test_a_stream_error_event_becomes_the_envelope_and_done(servers: Servers, client: openai.OpenAI) -> None:
    body = {"messages": QUESTION, "max_tokens": 3, "stream": True, **BAD_FOR_TSERVE}
    straight = data_lines(servers.tserve_url, {**body, "model": servers.tserve_model})
    message = json.loads(straight[-1])["error"]
    assert isinstance(message, str) and "[DONE]" not in straight  # a bare string, and no [DONE]
    relayed = data_lines(servers.front.url, {**body, "model": NAME})
    assert relayed[-1] == "[DONE]"
    error = json.loads(relayed[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] == message
    with pytest.raises(openai.APIError) as caught:  # the SDK raises on the relayed error event
        for _ in client.chat.completions.create(
            model=NAME, messages=QUESTION, max_tokens=3, stream=True, extra_body=BAD_FOR_TSERVE
        ):
            pass
    assert caught.value.message == message


def test_a_detail_error_reaches_the_client_as_the_envelope(servers: Servers, client: openai.OpenAI) -> None:
    straight = httpx.post(servers.tserve_url + "/v1/embeddings", json={"model": servers.tserve_model, "input": "x"})
    assert straight.status_code == 404 and "detail" in straight.json()  # no embeddings route there
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model=NAME, input="x")
    assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}


def test_the_front_still_answers_after_the_errors(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=3)
    assert reply.choices[0].message.content
