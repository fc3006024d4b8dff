"""Registry state machine and eviction over FakeEngine: lazy load, 503 while loading, shared loads, LRU
eviction of idle models only, keep_alive, failed-load isolation, capabilities, leases."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.errors import ModelCapabilityError
from gateway.registry import COMPLETION, LocalKind, ModelRegistry, ModelState
from gateway.settings import ModelSpec
from tests.unit.helpers import USER, assert_envelope, post_then_disconnect, sse_events, wait_until
from tests.unit.registry_helpers import FakeModels, multi_settings, open_multi

pytestmark = pytest.mark.anyio

A = {"name": "model-a", "source": "org/a"}
B = {"name": "model-b", "source": "org/b", "aliases": ["bee"]}
LOADING_EXTRA = frozenset({"estimated_time"})


async def test_only_the_first_model_preloads_and_others_load_on_first_request(tmp_path):
    async with open_multi(multi_settings(tmp_path, A, B)) as m:
        assert (m.state("model-a"), m.state("model-b")) == ("ready", "unloaded")
        assert (await m.client.get("/health/ready")).status_code == 200  # only preload models count
        r = await m.client.get("/health/ready", params={"model": "model-b"})
        assert r.status_code == 503 and r.json()["status"] == "unloaded"
        listed = (await m.client.get("/v1/models")).json()["data"]
        assert {c["id"]: c["status"] for c in listed} == {"model-a": "ready", "model-b": "unloaded", "bee": "unloaded"}
        r = await m.chat("bee")
        error = assert_envelope(r, 503, code="model_loading", param="model", extra=LOADING_EXTRA)
        assert error["estimated_time"] > 0 and int(r.headers["retry-after"]) >= 1
        assert await wait_until(lambda: m.state("model-b") == "ready", timeout=5)
        r = await m.chat("bee")
        assert r.status_code == 200 and r.json()["model"] == "bee"
        assert m.models.loads == {"model-a": 1, "model-b": 1}
        card = (await m.client.get("/v1/models/model-b")).json()
        details = card["details"]
        assert card["status"] == "ready" and details["state"] == "ready" and details["loads"] == 1
        assert details["load_seconds"] is not None and details["last_used"] is not None
        assert details["capabilities"] == ["chat", "completion", "tokenize"] and details["family"] == "generic"


async def test_503_while_loading_then_wait_header_waits_and_ten_first_requests_share_one_load(tmp_path):
    models = FakeModels(gates={"model-b": threading.Event()})
    async with open_multi(multi_settings(tmp_path, A, B), models) as m:
        r = await m.chat("model-b")
        assert_envelope(r, 503, code="model_loading", extra=LOADING_EXTRA)
        card = (await m.client.get("/v1/models/model-b")).json()
        assert card["status"] == "loading"
        assert card["details"]["progress"]["stage"] and card["details"]["estimated_time"] > 0
        waiting = [asyncio.create_task(m.chat("model-b", wait=True)) for _ in range(10)]
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in waiting)
        models.gates["model-b"].set()
        responses = await asyncio.wait_for(asyncio.gather(*waiting), timeout=10)
        assert [r.status_code for r in responses] == [200] * 10
        assert models.loads["model-b"] == 1
        assert m.registry.find("model-b").in_use == 0


async def test_wait_is_bounded_by_the_wait_setting(tmp_path):
    models = FakeModels(gates={"model-b": threading.Event()})
    async with open_multi(multi_settings(tmp_path, A, B, wait_for_model_seconds=0.3), models) as m:
        r = await m.chat("model-b", wait=True)
        assert_envelope(r, 503, code="model_loading", extra=LOADING_EXTRA)


async def test_max_loaded_models_evicts_the_idle_lru_model_and_closes_its_engine(tmp_path):
    async with open_multi(multi_settings(tmp_path, A, B, max_loaded_models=1)) as m:
        assert (await m.chat("model-b", wait=True)).status_code == 200
        assert (m.state("model-a"), m.state("model-b")) == ("unloaded", "ready")
        [engine_a] = m.models.engines["model-a"]
        assert engine_a.closed and m.registry.find("model-a").served is None
        assert (await m.chat("model-a", wait=True)).status_code == 200  # reloaded on demand
        assert (m.state("model-a"), m.state("model-b")) == ("ready", "unloaded")
        assert m.models.loads == {"model-a": 2, "model-b": 1}


async def test_a_model_with_a_running_stream_is_never_evicted(tmp_path):
    models = FakeModels(pieces=[f"t{i} " for i in range(30)], delay=0.05)
    settings = multi_settings(tmp_path, A, B, max_loaded_models=1, wait_for_model_seconds=0.4)
    async with open_multi(settings, models) as m:
        stream = asyncio.create_task(m.chat("model-a", stream=True))
        assert await wait_until(lambda: m.registry.find("model-a").in_use == 1, timeout=2)
        r = await m.chat("model-b", wait=True)  # no idle model to evict within the wait
        assert r.status_code == 503 and r.json()["error"]["code"] in ("model_loading", "model_capacity")
        assert m.state("model-a") == "ready" and m.registry.find("model-a").in_use == 1
        assert await wait_until(lambda: m.state("model-b") == "unloaded", timeout=3)  # the load gave up
        assert m.models.loads["model-b"] == 0 and m.state("model-a") == "ready"
        events = sse_events((await stream).text)
        assert "".join(c["delta"].get("content") or "" for e in events for c in e["choices"]).count("t") == 30
        assert m.registry.find("model-a").in_use == 0
        assert (await m.chat("model-b")).status_code == 503  # starts the load; a is idle now: evicted
        assert await wait_until(lambda: m.state("model-b") == "ready", timeout=20)
        assert m.state("model-a") == "unloaded"


async def test_eviction_waits_for_the_stream_then_loads(tmp_path):
    models = FakeModels(pieces=[f"t{i} " for i in range(10)], delay=0.05)
    async with open_multi(multi_settings(tmp_path, A, B, max_loaded_models=1), models) as m:
        stream = asyncio.create_task(m.chat("model-a", stream=True))
        assert await wait_until(lambda: m.registry.find("model-a").in_use == 1, timeout=2)
        r = await m.chat("model-b", wait=True)
        assert r.status_code == 200
        assert stream.done() and sse_events(stream.result().text)  # finished before a was unloaded
        assert not any(e.aborted for e in models.engines["model-a"])


async def test_keep_alive_unloads_after_idle_and_minus_one_never(tmp_path):
    fast = {**A, "keep_alive": "0.2s"}
    never = {**B, "keep_alive": -1, "preload": True}
    async with open_multi(multi_settings(tmp_path, fast, never)) as m:
        assert (await m.chat("model-a")).status_code == 200
        assert (await m.chat("model-b")).status_code == 200
        assert await wait_until(lambda: m.state("model-a") == "unloaded", timeout=5)
        assert m.models.engines["model-a"][0].closed
        await asyncio.sleep(0.5)
        assert m.state("model-b") == "ready"
        assert (await m.chat("model-a", wait=True)).status_code == 200


async def test_failed_load_is_isolated_and_load_retries_it(tmp_path):
    models = FakeModels(broken={"model-b"})
    settings = multi_settings(tmp_path, A, {**B, "preload": True}, admin_key="k")
    async with open_multi(settings, models) as m:
        entry = m.registry.find("model-b")
        assert entry.state is ModelState.FAILED and "no weights at org/b" in entry.error
        assert (await m.chat("model-a")).status_code == 200
        r = await m.chat("model-b")
        assert_envelope(r, 503, code="model_not_ready")
        assert r.headers["x-should-retry"] == "false"
        r = await m.client.get("/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        card = (await m.client.get("/v1/models/model-b")).json()
        assert "FileNotFoundError: no weights at org/b" in card["details"]["error"]
        failed = await m.admin("POST", "/models/model-b/load", key="k")
        assert_envelope(failed, 503, code="model_not_ready")
        models.broken.clear()  # the path is fixed
        r = await m.admin("POST", "/models/model-b/load", key="k")
        assert r.status_code == 200 and r.json()["state"] == "ready" and r.json()["error"] is None
        assert (await m.chat("model-b")).status_code == 200
        assert (await m.client.get("/health/ready")).status_code == 200


async def test_unload_drains_running_requests_and_force_aborts_them(tmp_path):
    models = FakeModels(pieces=[f"t{i} " for i in range(40)], delay=0.05)
    async with open_multi(multi_settings(tmp_path, A, admin_key="k"), models) as m:
        stream = asyncio.create_task(m.chat("model-a", stream=True))
        assert await wait_until(lambda: m.registry.find("model-a").in_use == 1, timeout=2)
        r = await m.admin("POST", "/models/model-a/unload", key="k")  # waits for the stream
        assert r.status_code == 200 and r.json()["state"] == "unloaded"
        # The lease ends with the stream's last chunk; the client then reads the tail ([DONE]) on its own time.
        await asyncio.wait_for(stream, timeout=5)
        assert not models.engines["model-a"][0].aborted
        stream = asyncio.create_task(m.chat("model-a", stream=True, wait=True))
        assert await wait_until(lambda: m.registry.find("model-a").in_use == 1, timeout=5)
        r = await m.admin("POST", "/models/model-a/unload", key="k", params={"force": "true"})
        assert r.json()["state"] == "unloaded" and models.engines["model-a"][1].closed
        assert m.registry.find("model-a").in_use == 0
        # The fake engine ignores close, so the aborted stream ends later: its lease must not count against
        # the next load's requests.
        fresh = asyncio.create_task(m.chat("model-a", stream=True, wait=True))
        assert await wait_until(lambda: m.registry.find("model-a").in_use == 1, timeout=5)
        await stream
        assert m.registry.find("model-a").in_use == 1 and not fresh.done()
        await fresh
        assert m.registry.find("model-a").in_use == 0


async def test_client_disconnect_releases_the_lease(tmp_path):
    models = FakeModels(pieces=[f"t{i} " for i in range(200)], delay=0.05)
    async with open_multi(multi_settings(tmp_path, A), models) as m:
        body = {"model": "model-a", "messages": USER, "stream": True}
        exchange = await post_then_disconnect(
            m.app, "/v1/chat/completions", body, disconnect_when=lambda c: b'"content":"t' in b"".join(c)
        )
        assert exchange.status == 200
        assert await wait_until(lambda: m.registry.find("model-a").in_use == 0, timeout=3)
        await asyncio.wait({exchange.task}, timeout=2)


async def test_a_4xx_in_prepare_releases_the_lease(tmp_path):
    async with open_multi(multi_settings(tmp_path, A)) as m:
        r = await m.chat("model-a", top_logprobs=3)  # top_logprobs without logprobs → 400
        assert r.status_code == 400
        assert m.registry.find("model-a").in_use == 0


async def test_a_model_without_the_capability_is_a_400_naming_what_it_can_do():
    class CompletionOnly(LocalKind):
        capabilities = frozenset({COMPLETION})

    registry = ModelRegistry(
        [ModelSpec(name="base", source="org/base")], FakeModels(), kinds={"local": CompletionOnly(FakeModels())}
    )
    with pytest.raises(ModelCapabilityError) as caught:
        await registry.acquire("base", "chat")
    assert caught.value.status_code == 400 and "completion" in caught.value.message
    assert registry.find("base").state is ModelState.UNLOADED  # nothing loaded for a request it cannot serve
