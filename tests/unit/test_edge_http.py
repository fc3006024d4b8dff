"""The HTTP edge (issue 10): JSON Content-Type (415), body size (413), CORS allowlist, client text in logs,
no server paths or raw exception text to clients. Through the real app and its middleware."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.cli import build_parser, settings_from_args
from gateway.settings import Settings, default_model_name
from tests.unit.helpers import MODEL, USER, assert_envelope, make_settings, open_gateway

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": MODEL, "messages": USER}).encode()


# ---- Content-Type -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data"],
)
async def test_body_not_declared_as_json_is_415(gw, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = await gw.client.post(CHAT, content=BODY, headers=headers)
    if content_type is None:
        assert "content-type" not in r.request.headers
    error = assert_envelope(r, 415, code="unsupported_media_type", error_type="invalid_request_error")
    assert "application/json" in error["message"]
    assert r.headers.get("x-request-id")
    r = await gw.client.post("/v1/completions", content=b'{"prompt": "hi"}', headers=headers)
    assert_envelope(r, 415)
    assert gw.engine.requests == []  # nothing was processed


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
async def test_json_content_types_are_accepted(gw, content_type):
    r = await gw.client.post(CHAT, content=BODY, headers={"content-type": content_type})
    assert r.status_code == 200, r.text


async def test_get_and_bodyless_requests_need_no_content_type(gw):
    assert (await gw.client.get("/v1/models")).status_code == 200
    r = await gw.client.post(CHAT)  # no body: the route's own 400, not a 415
    assert_envelope(r, 400)


# ---- body size ----------------------------------------------------------------------------------------------


async def test_declared_body_over_the_limit_is_413_without_reading_it():
    async with open_gateway(settings=make_settings(max_body_bytes=4096)) as gw:
        big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]})
        r = await gw.client.post(CHAT, content=big, headers={"content-type": "application/json"})
        error = assert_envelope(r, 413, code="request_too_large")
        assert "4096" in error["message"]
        assert gw.engine.requests == []
        assert (await gw.chat()).status_code == 200


async def test_chunked_body_is_counted_as_it_streams_in():
    async with open_gateway(settings=make_settings(max_body_bytes=4096)) as gw:
        pulled = []

        async def chunks(total: int) -> AsyncIterator[bytes]:
            payload = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * total}]}).encode()
            for start in range(0, len(payload), 1000):
                pulled.append(start)
                yield payload[start : start + 1000]

        r = await gw.client.post(CHAT, content=chunks(50_000), headers={"content-type": "application/json"})
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert_envelope(r, 413, code="request_too_large")
        assert len(pulled) <= 6  # 4096 bytes in 1000-byte chunks: the other ~45 were never read
        assert gw.engine.requests == []
        # a small chunked body is replayed to the app intact
        r = await gw.client.post(CHAT, content=chunks(100), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Hello world!"


# ---- CORS --------------------------------------------------------------------------------------------------


def preflight(origin: str) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, authorization",
    }


async def test_cors_is_off_by_default(gw):
    r = await gw.client.options(CHAT, headers=preflight("https://evil.example"))
    assert "access-control-allow-origin" not in r.headers
    r = await gw.client.post(CHAT, json={"messages": USER}, headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


async def test_cors_allowlist():
    settings = make_settings(cors_origins=["http://localhost:3000"])
    async with open_gateway(settings=settings) as gw:
        r = await gw.client.options(CHAT, headers=preflight("http://localhost:3000"))
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in r.headers
        r = await gw.client.post(CHAT, json={"messages": USER}, headers={"origin": "http://localhost:3000"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        # another origin: the preflight is refused (envelope, not 405) and no grant is ever sent
        r = await gw.client.options(CHAT, headers=preflight("https://evil.example"))
        assert_envelope(r, 400, code="cors_disallowed")
        assert "access-control-allow-origin" not in r.headers
        r = await gw.client.post(CHAT, json={"messages": USER}, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        # an allowed origin can read the edge's own errors
        r = await gw.client.post(CHAT, content=BODY, headers={"origin": "http://localhost:3000"})
        assert r.status_code == 415 and r.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_cors_origins_from_env_and_flags(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GANTRY_CORS_ORIGINS", "http://a.example, http://b.example")
    assert Settings(_env_file=None).cors_origins == ["http://a.example", "http://b.example"]
    monkeypatch.setenv("GANTRY_CORS_ORIGINS", '["http://c.example"]')
    assert Settings(_env_file=None).cors_origins == ["http://c.example"]
    monkeypatch.delenv("GANTRY_CORS_ORIGINS")
    args = build_parser().parse_args(["serve", "--cors-origins", "http://d.example"])
    assert settings_from_args(args).cors_origins == ["http://d.example"]
    assert Settings(_env_file=None).cors_origins == []


# ---- logs -------------------------------------------------------------------------------------------------


async def test_unknown_field_names_cannot_forge_log_lines(gw, caplog: pytest.LogCaptureFixture):
    forged = "x\n2026-01-01 00:00:00 ERROR gateway: FORGED\r\x1b[31m\u2028"
    with caplog.at_level(logging.INFO, logger="gateway.requests"):
        r = await gw.chat(**{forged: 1, "y" * 5000: 2})
    assert r.status_code == 200
    lines = [rec.getMessage() for rec in caplog.records if "ignoring unknown fields" in rec.getMessage()]
    assert len(lines) == 1
    line = lines[0]
    for char in ("\n", "\r", "\x1b", "\u2028"):
        assert char not in line
    assert "FORGED" in line and len(line) < 1000


# ---- no paths, no raw errors ------------------------------------------------------------------------------


def test_model_id_from_a_path_is_the_directory_name(tmp_path: Path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    assert default_model_name(str(model_dir)) == "my-model"
    assert default_model_name(str(tmp_path / "gone" / "other-model")) == "other-model"  # not there (yet)
    assert default_model_name("~/models/gemma-3-270m-q4_k_m.gguf") == "gemma-3-270m-q4_k_m"
    assert default_model_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert default_model_name("embedded") == "smollm2-135m-instruct"


async def test_path_model_shows_no_path(tmp_path: Path):
    model_dir = tmp_path / "secret-dir" / "local-model"
    model_dir.mkdir(parents=True)
    settings = Settings(_env_file=None, model=str(model_dir))
    async with open_gateway(settings=settings) as gw:
        assert gw.app.state.registry.default.spec.name == "local-model"
        for path in ("/v1/models", "/v1/models/local-model", "/health/ready"):
            r = await gw.client.get(path)
            assert r.status_code == 200 and str(tmp_path) not in r.text, r.text
        assert "root" not in (await gw.client.get("/v1/models/local-model")).json()
        assert (await gw.chat(model="local-model")).status_code == 200


async def test_hub_model_keeps_its_root(gw):
    assert (await gw.client.get(f"/v1/models/{MODEL}")).json()["root"] == "org/fake-source"


async def test_404_does_not_list_the_models(gw):
    error = assert_envelope(await gw.chat(model="nope"), 404, code="model_not_found")
    assert "nope" in error["message"] and MODEL not in error["message"]
    error = assert_envelope(await gw.chat(model="z" * 5000), 404)
    assert len(error["message"]) < 400
