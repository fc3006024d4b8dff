"""A front gateway in front of a quirky upstream (no [DONE], `{"detail"}` errors, 422), a hanging one and a
dead one: real processes on 127.0.0.1, no model weights (the upstreams are tests/integration/quirky_upstream.py,
a small uvicorn server of its own; `transformers serve` itself is the upstream in
test_upstream_transformers_serve.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningServer, free_port, start_server, stop_server

ADMIN = {"Authorization": "Bearer admin-secret"}
front_logs: dict[str, Path] = {}
HANG_SECONDS = 2.0


def spawn_stub(tmp: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (tmp / f"stub-{port}.log").open("wb")
    cmd = [sys.executable, "-m", "tests.integration.quirky_upstream", "--port", str(port), *flags]
    process = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def wait_stub(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"the quirky upstream at {url} did not start")


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("upstream-quirks")
    quirky, quirky_url = spawn_stub(tmp)  # both start at once
    front_logs["quirky"] = tmp / f"stub-{quirky_url.rsplit(':', 1)[1]}.log"
    hanging, hanging_url = spawn_stub(tmp, "--hang")
    wait_stub(quirky_url)
    wait_stub(hanging_url)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    models = tmp / "models.yaml"
    models.write_text(
        f"""
models:
  - name: quirky
    kind: upstream
    owned_by: acme
    health_interval: 1
    replicas: [{{url: "{quirky_url}", model: quirky-model}}]
  - name: hanging
    kind: upstream
    timeouts: {{connect: 2, first_token: {HANG_SECONDS}, total: {HANG_SECONDS}}}
    replicas: [{{url: "{hanging_url}/v1", model: quirky-model}}]
  - name: dead
    kind: upstream
    preload: true
    replicas: [{{url: "{dead}"}}]
  - name: dead-with-fallback
    kind: upstream
    fallback: quirky
    replicas: [{{url: "{dead}"}}]
""",
        encoding="utf-8",
    )
    server = start_server(tmp, "--models-file", str(models), env={"GANTRY_ADMIN_KEY": "admin-secret"})
    yield server
    stop_server(server)
    for process in (quirky, hanging):
        process.kill()  # the hanging one never ends its sleeping handlers (a graceful stop would wait)
        process.wait(timeout=10)


@pytest.fixture
def client(front: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=front.base_url, api_key="x", max_retries=0, timeout=30)


def chat_body(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 5, **extra}


def test_listed_with_owner_and_context_length(front: RunningServer) -> None:
    cards = {card["id"]: card for card in httpx.get(front.base_url + "/models").json()["data"]}
    assert cards["quirky"]["owned_by"] == "acme"
    assert cards["quirky"]["max_model_len"] == 1234  # read from the upstream's /v1/models


def test_stream_gets_done_and_our_model_name(front: RunningServer, client: openai.OpenAI) -> None:
    with httpx.stream("POST", front.base_url + "/chat/completions", json=chat_body("quirky", stream=True)) as r:
        assert r.status_code == 200
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"  # the upstream sent none
    assert data.count("[DONE]") == 1
    assert all('"model":"quirky"' in d for d in data[:-1])
    text = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **chat_body("quirky"))
    )
    assert text == "one two three four five"


def test_body_passes_through_except_model(front: RunningServer) -> None:
    extras = {"top_k": 3, "guided_json": {"type": "object"}, "chat_template_kwargs": {"enable_thinking": False}}
    answer = httpx.post(front.base_url + "/chat/completions", json=chat_body("quirky", **extras), timeout=30).json()
    assert answer["model"] == "quirky"
    received = answer["received"]
    assert received["model"] == "quirky-model"  # the upstream's own id
    assert {k: received[k] for k in extras} == extras
    assert received["messages"] == chat_body("quirky")["messages"]


def test_detail_422_becomes_400_envelope(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:  # the SDK reads our envelope
        client.chat.completions.create(**chat_body("quirky"), extra_body={"reject": True})
    assert caught.value.status_code == 400
    assert caught.value.body["message"] == "reject: Extra inputs are not permitted"
    assert caught.value.body["type"] == "invalid_request_error"


def test_detail_string_keeps_its_status_in_the_envelope(front: RunningServer) -> None:
    # the quirky server has no /v1/completions: FastAPI answers 404 {"detail": "Not Found"}
    response = httpx.post(front.base_url + "/completions", json={"model": "quirky", "prompt": "x"}, timeout=30)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Not Found"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_bare_string_5xx_becomes_502_envelope(front: RunningServer) -> None:
    response = httpx.post(front.base_url + "/chat/completions", json=chat_body("quirky", crash=True), timeout=30)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "bad_upstream_response"
    assert "Internal Server Error" in error["message"]


def test_hanging_upstream_is_504_within_its_timeout(front: RunningServer) -> None:
    for stream in (False, True):
        started = time.monotonic()
        response = httpx.post(
            front.base_url + "/chat/completions", json=chat_body("hanging", stream=stream), timeout=60
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "upstream_timeout"
        assert HANG_SECONDS <= elapsed < HANG_SECONDS + 5  # one replica: nothing to retry on


def test_unreachable_is_503_with_retry_after(front: RunningServer) -> None:
    response = httpx.post(front.base_url + "/chat/completions", json=chat_body("dead"), timeout=30)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "upstream_unavailable"
    admin = httpx.get(front.url + "/admin/models", headers=ADMIN).json()["data"]
    dead = next(m for m in admin if m["id"] == "dead")
    assert dead["upstream"]["replicas"][0]["health"] in ("down", "ejected")
    assert dead["upstream"]["healthy_replicas"] == 0


def test_fallback_answers_when_no_replica_can(front: RunningServer) -> None:
    response = httpx.post(front.base_url + "/chat/completions", json=chat_body("dead-with-fallback"), timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "quirky"  # the model that answered
    assert response.json()["choices"][0]["message"]["content"] == "one two three four five"


def test_client_drop_closes_the_upstream_stream(front: RunningServer) -> None:
    log = front_logs["quirky"]
    before = log.read_text().count("stream closed by the client")
    body = chat_body("quirky", stream=True, endless=True)
    with httpx.stream("POST", front.base_url + "/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
    deadline = time.monotonic() + 10
    while log.read_text().count("stream closed by the client") == before:
        assert time.monotonic() < deadline, "the upstream stream stayed open after the client left"
        time.sleep(0.05)
