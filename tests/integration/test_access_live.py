"""API keys, model visibility and per-key limits on a real server, with the openai SDK where a client would
use it (httpx for what the SDK cannot send: no key, an `api-key` header, a 20 MB body, a CORS preflight).

One server (tiny random-weight models, keys from `python -m gateway keys create`) for keys, visibility, rpm,
tpm and concurrency; two more processes sharing one Redis for the cross-replica rpm budget."""

from __future__ import annotations

import asyncio
import io
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from gateway.access.cli import run_keys_command
from gateway.cli import build_parser
from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningServer, free_port, start_server, stop_server

ADMIN = "live-admin-key"
ENV_KEY = "live-plain-env-key"
ORIGIN = "https://app.example"
NO_EOS = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|>: a random model never stops early
USER = [{"role": "user", "content": "Say hi."}]


def create_key(keys_file: Path, name: str, *flags: str) -> str:
    """`keys create` in this process (the CLI's own parser and command; a subprocess per key costs seconds)."""
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        assert (
            run_keys_command(
                build_parser().parse_args(["keys", "--keys-file", str(keys_file), "create", "--name", name, *flags])
            )
            == 0
        )
    return out.getvalue().strip()


def create_key_subprocess(keys_file: Path, name: str, *flags: str) -> str:
    """`python -m gateway keys create`: the key is printed once on stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "--keys-file", str(keys_file), "create", "--name", name, *flags],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("access")


@pytest.fixture(scope="module")
def tiny_model(workdir: Path) -> Path:
    from tests.adapters.tiny_models import build_family_model

    return build_family_model("smollm2", workdir / "tiny-smollm2")


@pytest.fixture(scope="module")
def keys(workdir: Path) -> dict[str, str]:
    path = workdir / "keys.yaml"
    return {
        "plain": create_key_subprocess(path, "plain"),
        "lister": create_key(path, "lister", "--models", "secret"),
        "rpm5": create_key(path, "rpm5", "--rpm", "5"),
        "tpm": create_key(path, "tpm", "--tpm", "150"),
        "conc": create_key(path, "conc", "--max-concurrent", "2"),
        "old": create_key(path, "old", "--expires", "2020-01-01T00:00:00Z"),
    }


@pytest.fixture(scope="module")
def server(workdir: Path, tiny_model: Path, keys: dict[str, str]) -> Iterator[RunningServer]:
    common = {"source": str(tiny_model), "max_context": 2048, "device": "cpu", "preload": True}
    models = [
        {"name": "keyed", **common},
        {"name": "open", "visibility": "public", **common},
        {"name": "secret", "visibility": "private", **common},
    ]
    models_file = workdir / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    env = {
        "GANTRY_KEYS_FILE": str(workdir / "keys.yaml"),
        "GANTRY_API_KEYS": ENV_KEY,
        "GANTRY_ADMIN_KEY": ADMIN,
        "GANTRY_CORS_ORIGINS": ORIGIN,
    }
    running = start_server(workdir, "--models-file", str(models_file), env=env)
    yield running
    stop_server(running)
    log = running.log.read_text(errors="replace")
    for key in (*keys.values(), ENV_KEY, ADMIN):  # keys are never logged
        assert key not in log


def sdk(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


def chat(client: openai.OpenAI, model: str = "keyed", **kwargs):
    kwargs.setdefault("max_tokens", 4)
    return client.chat.completions.with_raw_response.create(model=model, messages=USER, **kwargs)


def test_every_route_needs_a_key(server: RunningServer) -> None:
    body = {"model": "keyed", "messages": USER, "prompt": "x", "max_tokens": 2}
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/keyed"),
        ("GET", "/admin/models"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
    ]:
        r = httpx.request(method, server.url + path, json=body if method == "POST" else None, timeout=60)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as wrong:
        sdk(server, "not-a-key").models.list()
    assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/health/ready", timeout=30).status_code == 200


def test_keys_in_each_header_and_expiry(server: RunningServer, keys: dict[str, str]) -> None:
    assert {m.id for m in sdk(server, keys["plain"]).models.list()} == {"keyed", "open"}
    assert sdk(server, ENV_KEY).chat.completions.create(model="keyed", messages=USER, max_tokens=2).choices
    for header in ("api-key", "x-api-key"):
        r = httpx.get(f"{server.base_url}/models", headers={header: keys["plain"]}, timeout=60)
        assert r.status_code == 200, r.text
    with pytest.raises(openai.AuthenticationError, match="expired"):
        sdk(server, keys["old"]).models.list()
    assert httpx.get(f"{server.url}/admin/models", headers={"api-key": ADMIN}, timeout=60).status_code == 200
    assert httpx.get(f"{server.url}/admin/models", headers={"api-key": keys["plain"]}, timeout=60).status_code == 401


def test_visibility(server: RunningServer, keys: dict[str, str]) -> None:
    anonymous = {"messages": USER, "max_tokens": 2}
    r = httpx.post(f"{server.base_url}/chat/completions", json={"model": "open", **anonymous}, timeout=120)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    r = httpx.post(f"{server.base_url}/chat/completions", json={"model": "keyed", **anonymous}, timeout=120)
    assert r.status_code == 401
    plain = sdk(server, keys["plain"])
    with pytest.raises(openai.NotFoundError) as hidden:
        chat(plain, "secret")
    with pytest.raises(openai.NotFoundError) as unknown:
        chat(plain, "nothere")
    assert hidden.value.body["message"] == unknown.value.body["message"].replace("nothere", "secret")
    assert hidden.value.code == unknown.value.code == "model_not_found"
    assert "secret" not in {m.id for m in plain.models.list()}
    lister = sdk(server, keys["lister"])
    assert chat(lister, "secret").http_response.status_code == 200
    assert {m.id for m in lister.models.list()} == {"open", "secret"}


def test_rpm_5_then_429_with_headers(server: RunningServer, keys: dict[str, str]) -> None:
    client = sdk(server, keys["rpm5"])
    remaining = []
    for _ in range(5):
        raw = client.models.with_raw_response.list()
        assert raw.headers["x-ratelimit-limit-requests"] == "5"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(openai.RateLimitError) as refused:
        client.models.list()
    headers = refused.value.response.headers
    assert refused.value.code == "rate_limit_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-reset-requests"].endswith("s")


def test_tpm_counts_real_tokens(server: RunningServer, keys: dict[str, str]) -> None:
    client = sdk(server, keys["tpm"])
    expected, spent, started = 150, 0, time.monotonic()
    for _ in range(10):
        try:
            raw = chat(client, max_tokens=16, logit_bias=NO_EOS)
        except openai.RateLimitError as exc:
            assert exc.response.headers["x-ratelimit-remaining-tokens"] == "0"
            assert spent >= 150  # refused only once the real tokens spent reached the budget
            break
        remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
        # the sliding window lets old tokens fade as time passes: never below the exact figure, barely above
        slack = 1 + spent * (time.monotonic() - started) / 60
        assert expected <= remaining <= expected + slack, (remaining, expected)
        usage = raw.parse().usage
        assert usage.completion_tokens == 16 and usage.prompt_tokens > 0
        spent += usage.total_tokens
        expected = max(0, 150 - spent)
    else:
        pytest.fail("the tpm budget was never exhausted")


def test_third_concurrent_stream_is_refused(server: RunningServer, keys: dict[str, str]) -> None:
    client = sdk(server, keys["conc"])
    streams = [
        client.chat.completions.create(model="keyed", messages=USER, max_tokens=1500, logit_bias=NO_EOS, stream=True)
        for _ in range(2)
    ]
    try:
        for stream in streams:
            next(iter(stream))  # both are running
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="keyed", messages=USER, max_tokens=2, stream=True)
        assert refused.value.response.headers["retry-after"]
    finally:
        for stream in streams:
            stream.close()
    deadline = time.monotonic() + 60  # the slots come back once the streams end
    while True:
        try:
            assert chat(client, max_tokens=2).http_response.status_code == 200
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_body_limit_and_cors(server: RunningServer, keys: dict[str, str]) -> None:
    big = b'{"model": "keyed", "messages": [], "pad": "' + b"x" * (20 << 20) + b'"}'
    headers = {"Authorization": f"Bearer {keys['plain']}", "Content-Type": "application/json"}
    r = httpx.post(f"{server.base_url}/chat/completions", content=big, headers=headers, timeout=120)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
    assert chat(sdk(server, keys["plain"]), max_tokens=2).http_response.status_code == 200
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    r = httpx.options(f"{server.base_url}/chat/completions", headers=preflight, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.options(
        f"{server.base_url}/chat/completions", headers={**preflight, "Origin": "https://evil.example"}, timeout=30
    )
    assert "access-control-allow-origin" not in r.headers


# ---- two replicas sharing one Redis -------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.skip("redis-server is not installed (Debian package redis-server; `make test` installs it as root)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def replicas(workdir: Path, tiny_model: Path, redis_url: str) -> Iterator[list[RunningServer]]:
    # no preloaded model: these servers only count requests (GET /v1/models), so they start in seconds
    models_file = workdir / "lazy.yaml"
    models_file.write_text(yaml.safe_dump({"models": [{"name": "lazy", "source": str(tiny_model), "preload": False}]}))
    env = {
        "GANTRY_API_KEYS": ENV_KEY,
        "GANTRY_DEFAULT_RPM": "4",
        "GANTRY_RATE_LIMIT_WINDOW_SECONDS": "3",
        "GANTRY_RATE_LIMIT_STORAGE": redis_url,
    }
    started: list[RunningServer] = []
    threads = [
        threading.Thread(
            target=lambda: started.append(start_server(workdir, "--models-file", str(models_file), env=env))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 2, "a replica did not start"
    yield started
    for running in started:
        stop_server(running)


def test_two_replicas_share_one_rpm_budget_and_it_recovers(replicas: list[RunningServer]) -> None:
    clients = [sdk(replica, ENV_KEY) for replica in replicas]
    for i in range(4):  # alternate: 2 requests on each replica use the whole budget of 4
        raw = clients[i % 2].models.with_raw_response.list()
        assert raw.headers["x-ratelimit-remaining-requests"] == str(3 - i)
    for client in clients:
        with pytest.raises(openai.RateLimitError) as refused:
            client.models.list()
    time.sleep(int(refused.value.response.headers["retry-after"]) + 0.5)  # the window has moved on
    assert clients[1].models.with_raw_response.list().http_response.status_code == 200


def test_redis_concurrency_slots_are_shared_and_a_dead_replicas_expire(redis_url: str) -> None:
    """The in-flight counter two replicas share (the gateway's own class against the real Redis)."""
    from gateway.access.limiter import RedisConcurrency

    async def scenario() -> None:
        one, two = RedisConcurrency(redis_url, lease_seconds=1.0), RedisConcurrency(redis_url, lease_seconds=1.0)
        first, second = await one.acquire("shared", 2), await two.acquire("shared", 2)
        assert first is not None and second is not None
        assert await one.acquire("shared", 2) is None and await two.acquire("shared", 2) is None
        await first()  # released: a slot is free again, for either replica
        assert await two.acquire("shared", 2) is not None
        await asyncio.sleep(1.2)  # both holders "died" without releasing: their leases ran out
        assert await one.acquire("shared", 2) is not None

    asyncio.run(scenario())
