"""Liveness, readiness while loading / after a failed load, /v1/models, /docs (compat §2.5, §9 18, 20)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.engine.fake import FakeEngine
from gateway.registry import ModelState
from tests.unit.helpers import ALIASES, MODEL, assert_envelope, open_gateway, served_factory

pytestmark = pytest.mark.anyio
LOADING_EXTRA = frozenset({"estimated_time"})


async def test_health_is_200(gw):
    r = await gw.client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_ready_after_load(gw):
    r = await gw.client.get("/health/ready")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"
    assert r.json()["models"] == {MODEL: "ready"}


async def test_readiness_while_loading_then_ready():
    release = threading.Event()
    engine = FakeEngine()
    build = served_factory(engine)

    def slow_factory(spec):
        assert release.wait(timeout=10), "test never released the factory"
        return build(spec)

    async with open_gateway(engine, factory=slow_factory, load=False) as gw:
        loading = asyncio.create_task(gw.app.state.registry.load_all())
        try:
            await asyncio.sleep(0.05)
            assert gw.app.state.registry.default.state is ModelState.LOADING
            assert (await gw.client.get("/health")).status_code == 200
            r = await gw.client.get("/health/ready")
            assert r.status_code == 503
            assert float(r.headers["retry-after"]) > 0
            assert r.json()["status"] == "loading"
            r = await gw.chat()
            error = assert_envelope(r, 503, code="model_loading", error_type="service_unavailable", extra=LOADING_EXTRA)
            assert "loading" in error["message"]
            assert error["estimated_time"] > 0
            assert 0 < float(r.headers["retry-after"]) <= 60
            assert engine.requests == []
            r = await gw.completion(prompt="hi")
            assert_envelope(r, 503, code="model_loading", extra=LOADING_EXTRA)
            # /v1/models still answers, with the model's status
            models = (await gw.client.get("/v1/models")).json()
            assert {card["status"] for card in models["data"]} == {"loading"}
        finally:
            release.set()
            await asyncio.wait_for(loading, timeout=10)
        assert (await gw.client.get("/health/ready")).status_code == 200
        assert (await gw.chat()).status_code == 200


async def test_failed_load_keeps_server_up():
    def broken_factory(spec):
        raise RuntimeError("weights in /srv/secret/models/tiny/model.safetensors are corrupt")

    async with open_gateway(factory=broken_factory) as gw:
        entry = gw.app.state.registry.default
        assert entry.state is ModelState.FAILED
        assert "are corrupt" in entry.error
        r = await gw.chat()
        error = assert_envelope(r, 503, code="model_not_ready")
        # The client gets the short cause with paths cut to their last part, and a reference to the full
        # log entry; never the path itself.
        assert "/srv/secret" not in error["message"]
        assert "model.safetensors are corrupt" in error["message"]
        assert f"error ref {entry.error_ref}" in error["message"]
        assert r.headers.get("retry-after")
        assert (await gw.client.get("/health")).status_code == 200
        r = await gw.client.get("/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "are corrupt" in r.json()["error"]["message"] and "/srv/secret" not in r.text
        r = await gw.client.get(f"/v1/models/{MODEL}")
        assert r.status_code == 200
        assert r.json()["status"] == "failed"
        assert "/srv/secret" not in r.text and entry.error_ref in r.json()["details"]["error"]


async def test_failed_load_503_is_not_retried_by_clients():
    """A model that failed to load fails every request the same way: per compat §3.2/§9.18 the 503 should carry
    `x-should-retry: false`, or the openai SDK sleeps Retry-After (60 s) twice before giving up."""

    def broken_factory(spec):
        raise RuntimeError("weights are corrupt")

    async with open_gateway(factory=broken_factory) as gw:
        r = await gw.chat()
        assert r.status_code == 503
        assert r.headers.get("x-should-retry") == "false"


async def test_models_list_has_name_and_aliases(gw):
    r = await gw.client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [card["id"] for card in body["data"]] == [MODEL, *ALIASES]
    for card in body["data"]:
        assert card["object"] == "model"
        assert isinstance(card["created"], int)
        assert isinstance(card["owned_by"], str) and card["owned_by"]
        assert "details" not in card


@pytest.mark.parametrize("path", ["/v1/models/org/model-name", "/v1/models/org%2Fmodel-name"])
async def test_model_card_with_slash_in_id(gw, path):
    r = await gw.client.get(path)
    assert r.status_code == 200, r.text
    card = r.json()
    assert card["id"] == "org/model-name"
    assert card["object"] == "model"
    assert card["details"]["family"] == "generic"
    assert card["details"]["context_length"] == 4096
    assert card["max_model_len"] == 4096


async def test_model_card_by_name(gw):
    card = (await gw.client.get(f"/v1/models/{MODEL}")).json()
    assert card["id"] == MODEL
    assert card["root"] == "org/fake-source"
    assert card["details"]["stop_token_ids"] == sorted({151643, 151645})


async def test_unknown_model_card_is_404(gw):
    assert_envelope(await gw.client.get("/v1/models/nope/nothing"), 404, code="model_not_found")


async def test_docs_and_openapi(gw):
    assert (await gw.client.get("/docs")).status_code == 200
    schema = (await gw.client.get("/openapi.json")).json()
    assert "/v1/chat/completions" in schema["paths"]
    assert "/v1/completions" in schema["paths"]
