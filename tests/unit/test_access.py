"""API keys, model visibility, per-key limits and the request timeout, through the ASGI app (FakeEngine)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.access.cli import run_keys_command
from gateway.access.keys import KeyStore, hash_key
from gateway.access.limiter import duration
from gateway.cli import build_parser
from gateway.engine.fake import FakeEngine
from tests.unit.helpers import MODEL, USER, assert_envelope, make_settings, open_gateway, sse_events

pytestmark = pytest.mark.anyio

KEY = "k-plain-one"
ADMIN = "k-admin"


def auth(key: str, header: str = "authorization") -> dict[str, str]:
    return {header: f"Bearer {key}" if header == "authorization" else key}


def chat_body(model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, **extra}


def write_keys(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"keys": list(entries)}), encoding="utf-8")
    return path


def models_file(path: Path) -> Path:
    models = [
        {"name": "prot", "source": "org/prot"},
        {"name": "pub", "source": "org/pub", "visibility": "public", "preload": True},
        {"name": "priv", "source": "org/priv", "visibility": "private", "aliases": ["priv-alias"], "preload": True},
    ]
    path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    return path


async def test_open_server_without_keys_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        async with open_gateway() as gw:
            r = await gw.chat()
    assert r.status_code == 200
    assert not any(h.startswith("x-ratelimit") for h in r.headers)
    assert "No API key configured" in caplog.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", f"/v1/models/{MODEL}"),
        ("GET", "/admin/models"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/some/route/added/later"),
    ],
)
async def test_every_route_needs_a_key(method: str, path: str) -> None:
    async with open_gateway(settings=make_settings(api_keys=[KEY], admin_key=ADMIN)) as gw:
        body = {"json": chat_body(prompt="x")} if method == "POST" else {}
        for headers in ({}, auth("wrong-key"), auth("wrong-key", "api-key")):
            r = await gw.client.request(method, path, headers=headers, **body)
            error = assert_envelope(r, 401, code="invalid_api_key")
            assert "wrong-key" not in error["message"]
            assert r.headers.get("x-request-id")


async def test_key_headers_health_and_preflight() -> None:
    settings = make_settings(api_keys=f"other,{KEY}", cors_origins=["https://app.example"])
    async with open_gateway(settings=settings) as gw:
        for headers in (auth(KEY), auth(KEY, "api-key"), auth(KEY, "x-api-key"), {"Authorization": f"bearer {KEY}"}):
            assert (await gw.client.post("/v1/chat/completions", json=chat_body(), headers=headers)).status_code == 200
        assert (await gw.client.get("/health")).status_code == 200
        assert (await gw.client.get("/health/ready", headers=auth("nonsense"))).status_code == 200
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        r = await gw.client.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = await gw.client.options("/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_docs_can_be_opened_by_setting() -> None:
    async with open_gateway(settings=make_settings(api_keys=[KEY], docs_public=True)) as gw:
        assert (await gw.client.get("/docs")).status_code == 200
        assert (await gw.client.get("/openapi.json")).status_code == 200
        assert (await gw.client.get("/v1/models")).status_code == 401


async def test_admin_key_works_in_any_key_header_and_plain_keys_do_not_open_admin() -> None:
    async with open_gateway(settings=make_settings(api_keys=[KEY], admin_key=ADMIN)) as gw:
        assert (await gw.client.get("/admin/models", headers=auth(ADMIN, "x-api-key"))).status_code == 200
        assert_envelope(await gw.client.get("/admin/models", headers=auth(KEY)), 401, code="invalid_api_key")
    async with open_gateway(settings=make_settings(admin_key=ADMIN)) as gw:  # admin key alone: the rest is open
        assert (await gw.chat()).status_code == 200
        assert (await gw.client.get("/admin/models", headers=auth(ADMIN))).status_code == 200
        assert (await gw.client.get("/admin/models")).status_code == 401


async def test_keys_file_hashes_expiry_and_reload(tmp_path: Path) -> None:
    path = write_keys(
        tmp_path / "keys.yaml",
        {"name": "alice", "sha256": hash_key("alice-key")},
        {"name": "old", "sha256": hash_key("old-key"), "expires": "2020-01-01T00:00:00Z"},
    )
    assert "alice-key" not in path.read_text()
    async with open_gateway(settings=make_settings(keys_file=path)) as gw:
        ok = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=auth("alice-key"))
        assert ok.status_code == 200
        record_names = []
        gw.app.state.request_observers.append(lambda record: record_names.append(record.key_name))
        await gw.client.get("/v1/models", headers=auth("alice-key"))
        assert record_names == ["alice"]
        expired = assert_envelope(await gw.client.get("/v1/models", headers=auth("old-key")), 401)
        assert "expired" in expired["message"]
        # `keys create` appends to the file; the running server picks the new key up
        parser = build_parser()
        args = parser.parse_args(["keys", "--keys-file", str(path), "create", "--name", "carol", "--rpm", "3"])
        import io
        from contextlib import redirect_stdout

        out = io.StringIO()
        with redirect_stdout(out):
            assert run_keys_command(args) == 0
        new_key = out.getvalue().strip()
        assert new_key.startswith("gk-") and new_key not in path.read_text()
        gw.app.state.keys._checked = 0.0  # skip the once-a-second stat throttle
        r = await gw.client.get("/v1/models", headers=auth(new_key))
        assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "3"


def test_keys_create_refuses_a_taken_name(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.yaml", {"name": "alice", "sha256": hash_key("a")})
    args = build_parser().parse_args(["keys", "--keys-file", str(path), "create", "--name", "alice"])
    assert run_keys_command(args) == 1
    store = KeyStore([], path)
    assert [e.name for e in store.entries()] == ["alice"]


async def test_visibility_public_protected_private(tmp_path: Path) -> None:
    keys = write_keys(
        tmp_path / "keys.yaml",
        {"name": "lister", "sha256": hash_key("lister-key"), "models": ["priv-alias", "pub"]},
        {"name": "plain", "sha256": hash_key("plain-key")},
    )
    settings = make_settings(models_file=models_file(tmp_path / "models.yaml"), keys_file=keys, admin_key=ADMIN)
    async with open_gateway(settings=settings) as gw:
        post = gw.client.post
        # anonymous: the public model answers, the others need a key (401, not 404: nothing leaks either way)
        assert (await post("/v1/chat/completions", json=chat_body("pub"))).status_code == 200
        for model in ("prot", "priv", "no-such-model"):
            assert_envelope(await post("/v1/chat/completions", json=chat_body(model)), 401, code="invalid_api_key")
        assert (await gw.client.get("/v1/models")).status_code == 401
        # a key that does not list the private model gets exactly the unknown-model 404
        unknown = await post("/v1/chat/completions", json=chat_body("zzzz"), headers=auth("plain-key"))
        hidden = await post("/v1/chat/completions", json=chat_body("priv"), headers=auth("plain-key"))
        assert_envelope(hidden, 404, code="model_not_found")
        assert hidden.json() == {
            "error": {**unknown.json()["error"], "message": unknown.json()["error"]["message"].replace("zzzz", "priv")}
        }
        assert (await gw.client.get("/v1/models/priv", headers=auth("plain-key"))).status_code == 404
        plain_ids = {m["id"] for m in (await gw.client.get("/v1/models", headers=auth("plain-key"))).json()["data"]}
        assert plain_ids == {"prot", "pub"}
        assert (
            await post("/v1/chat/completions", json=chat_body("prot"), headers=auth("plain-key"))
        ).status_code == 200
        # the listing key: its models (by alias too) and the public one, not the unlisted protected one
        assert (
            await post("/v1/chat/completions", json=chat_body("priv"), headers=auth("lister-key"))
        ).status_code == 200
        assert (
            await post("/v1/chat/completions", json=chat_body("prot"), headers=auth("lister-key"))
        ).status_code == 404
        lister_ids = {m["id"] for m in (await gw.client.get("/v1/models", headers=auth("lister-key"))).json()["data"]}
        assert lister_ids == {"pub", "priv", "priv-alias"}
        ready = (await gw.client.get("/health/ready", headers=auth("plain-key"))).json()
        assert "priv" not in ready["models"]
        # the admin key sees everything
        admin_ids = {m["id"] for m in (await gw.client.get("/v1/models", headers=auth(ADMIN))).json()["data"]}
        assert admin_ids == {"prot", "pub", "priv", "priv-alias"}


async def test_rpm_429_with_headers(tmp_path: Path) -> None:
    settings = make_settings(api_keys=[KEY], default_rpm=2)
    async with open_gateway(settings=settings) as gw:
        first = await gw.client.get("/v1/models", headers=auth(KEY))
        second = await gw.client.get("/v1/models", headers=auth(KEY))
        third = await gw.client.get("/v1/models", headers=auth(KEY))
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert [first.headers["x-ratelimit-remaining-requests"], second.headers["x-ratelimit-remaining-requests"]] == [
        "1",
        "0",
    ]
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert_envelope(third, 429, code="rate_limit_exceeded", error_type="rate_limit_error")
    assert 1 <= int(third.headers["retry-after"]) <= 60
    assert third.headers["x-ratelimit-remaining-requests"] == "0"


async def test_tpm_charges_the_record_tokens_and_refuses_when_spent() -> None:
    settings = make_settings(api_keys=[KEY], default_tpm=1000)
    async with open_gateway(settings=settings) as gw:
        first = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=auth(KEY))
        used = first.json()["usage"]["total_tokens"]
        stream = await gw.client.post(
            "/v1/chat/completions",
            json=chat_body(stream=True, stream_options={"include_usage": True}),
            headers=auth(KEY),
        )
        assert int(stream.headers["x-ratelimit-remaining-tokens"]) in (1000 - used, 1000 - used + 1)
        streamed = sse_events(stream.text)[-1]["usage"]["total_tokens"]
        third = await gw.client.get("/v1/models", headers=auth(KEY))
        assert int(third.headers["x-ratelimit-remaining-tokens"]) in range(
            1000 - used - streamed, 1000 - used - streamed + 2
        )
    settings = make_settings(api_keys=[KEY], default_tpm=5)  # one chat spends more than 5 tokens
    async with open_gateway(settings=settings) as gw:
        assert (await gw.client.post("/v1/chat/completions", json=chat_body(), headers=auth(KEY))).status_code == 200
        r = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=auth(KEY))
        assert_envelope(r, 429, code="rate_limit_exceeded")
        assert r.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_max_concurrent_refuses_the_extra_request_and_frees_the_slot() -> None:
    settings = make_settings(api_keys=[KEY], default_max_concurrent=2)
    async with open_gateway(FakeEngine(delay=0.2), settings=settings) as gw:
        send = [
            gw.client.post("/v1/chat/completions", json=chat_body(stream=True), headers=auth(KEY)) for _ in range(3)
        ]
        results = await asyncio.gather(*send)
        assert sorted(r.status_code for r in results) == [200, 200, 429]
        assert (await gw.client.post("/v1/chat/completions", json=chat_body(), headers=auth(KEY))).status_code == 200


async def test_request_timeout_gives_504_or_an_error_event() -> None:
    engine = FakeEngine(pieces=["x"] * 50, delay=0.05)
    async with open_gateway(engine, settings=make_settings(request_timeout_seconds=0.3)) as gw:
        r = await gw.chat(max_tokens=50)
        assert_envelope(r, 504, code="request_timeout")
        r = await gw.chat(max_tokens=50, stream=True)
        assert r.status_code == 200
        events = sse_events(r.text)
        assert events[-1]["error"]["code"] == "request_timeout"
        await asyncio.sleep(0.1)
        assert len(engine.aborted) == 2  # both generations were stopped
        fast = await gw.chat(max_tokens=2)
        assert fast.status_code == 200


def test_duration_format() -> None:
    assert [duration(0.25), duration(1), duration(59.2), duration(60), duration(3723)] == [
        "0.3s",
        "1s",
        "1m0s",
        "1m0s",
        "1h2m3s",
    ]


async def test_requests_without_a_key_reach_only_routes_naming_a_public_model(tmp_path: Path) -> None:
    keys = write_keys(tmp_path / "keys.yaml", {"name": "plain", "sha256": hash_key("plain-key")})
    settings = make_settings(models_file=models_file(tmp_path / "models.yaml"), keys_file=keys)
    async with open_gateway(settings=settings) as gw:

        @gw.app.post("/v1/route-without-a-model-lookup")
        async def unguarded() -> dict[str, str]:  # a route another feature might add
            return {"reached": "yes"}

        path = "/v1/route-without-a-model-lookup"
        for body in ({"model": "prot"}, {"model": "nope"}, {}, [1, 2]):
            assert_envelope(await gw.client.post(path, json=body), 401, code="invalid_api_key")
        assert (await gw.client.post(path, json={"model": "pub"})).json() == {"reached": "yes"}
        assert (await gw.client.post(path, json={}, headers=auth("plain-key"))).status_code == 200
        r = await gw.client.post("/v1/chat/completions", json=chat_body("pub", stream=True))
        assert r.status_code == 200 and sse_events(r.text)


async def test_callers_without_a_key_share_the_default_limits(tmp_path: Path) -> None:
    keys = write_keys(tmp_path / "keys.yaml", {"name": "plain", "sha256": hash_key("plain-key")})
    settings = make_settings(models_file=models_file(tmp_path / "models.yaml"), keys_file=keys, default_rpm=1)
    async with open_gateway(settings=settings) as gw:
        first = await gw.client.post("/v1/chat/completions", json=chat_body("pub"))
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining-requests"] == "0"
        assert_envelope(await gw.client.post("/v1/chat/completions", json=chat_body("pub")), 429)
        keyed = await gw.client.post("/v1/chat/completions", json=chat_body("pub"), headers=auth("plain-key"))
        assert keyed.status_code == 200  # a key has its own budget


async def test_unreachable_redis_storage_is_a_503_not_a_500():
    import socket

    from gateway.access.limiter import RateLimiter
    from gateway.access.principal import KeyLimits
    from gateway.errors import LimitStorageUnavailableError

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limiter = RateLimiter(f"redis://127.0.0.1:{port}/0", 60)
    with pytest.raises(LimitStorageUnavailableError) as raised:
        await limiter.admit("team", KeyLimits(rpm=5, tpm=100, max_concurrent=2))
    assert raised.value.status_code == 503 and raised.value.headers()["Retry-After"]
    await limiter.charge("team", KeyLimits(tpm=100), 10)  # a finished answer is never failed by the storage
