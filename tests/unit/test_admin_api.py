"""/admin over FakeEngine: auth (404 when off, 401 envelope), register/use/remove, the state file across a
restart (a new app on the same files), 409 on a taken id, 400 on a bad spec."""

from __future__ import annotations

import json

import pytest

from tests.unit.helpers import assert_envelope
from tests.unit.registry_helpers import ADMIN_KEY, multi_settings, open_multi

pytestmark = pytest.mark.anyio

A = {"name": "model-a", "source": "org/a"}
ROUTES = [
    ("GET", "/models"),
    ("POST", "/models"),
    ("POST", "/models/model-a/load"),
    ("POST", "/models/model-a/unload"),
    ("DELETE", "/models/model-a"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_admin_routes_are_absent_without_an_admin_key(tmp_path, method, path):
    async with open_multi(multi_settings(tmp_path, A)) as m:
        r = await m.admin(method, path, json={"name": "x", "source": "y"})
        assert_envelope(r, 404)
        assert m.state("model-a") == "ready"


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("key", [None, "wrong-key", ""])
async def test_admin_routes_need_the_key(tmp_path, method, path, key):
    async with open_multi(multi_settings(tmp_path, A, admin_key=ADMIN_KEY)) as m:
        r = await m.admin(method, path, key=key, json={"name": "x", "source": "y"})
        assert_envelope(r, 401, code="invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert [e.name for e in m.registry.entries()] == ["model-a"] and m.state("model-a") == "ready"


async def test_register_use_restart_remove(tmp_path):
    settings = multi_settings(tmp_path, A, admin_key=ADMIN_KEY)
    spec = {"name": "runtime-model", "source": "org/runtime", "aliases": ["rt"], "keep_alive": "5m"}
    async with open_multi(settings) as m:
        r = await m.admin("POST", "/models", json=spec)
        assert r.status_code == 201, r.text
        assert r.json()["state"] == "unloaded" and r.json()["origin"] == "runtime" and r.json()["keep_alive"] == 300
        assert (await m.chat("rt", wait=True)).status_code == 200
        assert_envelope(await m.admin("POST", "/models", json=spec), 409, code="model_exists")
        assert_envelope(
            await m.admin("POST", "/models", json={"name": "a2", "aliases": ["model-a"], "source": "s"}), 409
        )
        bad = await m.admin("POST", "/models", json={"name": "bad", "source": "s", "keep_alive": "soon"})
        assert_envelope(bad, 400)
        assert_envelope(await m.admin("POST", "/models", json={"name": "bad", "source": "s", "nope": 1}), 400)
        listed = (await m.admin("GET", "/models")).json()["data"]
        assert [(row["id"], row["state"]) for row in listed] == [("model-a", "ready"), ("runtime-model", "ready")]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert [s["name"] for s in saved["added"]] == ["runtime-model"] and saved["removed"] == []

    async with open_multi(settings) as m:  # a restart: the runtime model is still there, loaded on demand
        assert [e.name for e in m.registry.entries()] == ["model-a", "runtime-model"]
        assert m.state("runtime-model") == "unloaded"
        assert (await m.chat("runtime-model", wait=True)).status_code == 200
        r = await m.admin("DELETE", "/models/rt")
        assert r.status_code == 200 and r.json() == {"id": "runtime-model", "object": "model", "deleted": True}
        assert m.models.engines["runtime-model"][-1].closed
        assert_envelope(await m.chat("runtime-model"), 404, code="model_not_found")
        assert_envelope(await m.admin("POST", "/models/runtime-model/load"), 404, code="model_not_found")
        r = await m.admin("DELETE", "/models/model-a")  # a models-file entry: removal is remembered too
        assert r.status_code == 200

    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved == {"added": [], "removed": ["model-a"]}
    async with open_multi(settings) as m:
        assert m.registry.entries() == []
        assert_envelope(await m.chat("model-a"), 404)
        assert (await m.admin("POST", "/models", json=A)).status_code == 201  # re-adding a removed one works
    assert json.loads((tmp_path / "state.json").read_text())["removed"] == []


async def test_unload_and_load_through_admin(tmp_path):
    async with open_multi(multi_settings(tmp_path, A, admin_key=ADMIN_KEY)) as m:
        r = await m.admin("POST", "/models/model-a/unload")
        assert r.status_code == 200 and r.json()["state"] == "unloaded"
        assert m.models.engines["model-a"][0].closed
        r = await m.admin("POST", "/models/model-a/load")
        assert r.status_code == 200 and r.json()["state"] == "ready" and r.json()["loads"] == 2
        assert (await m.chat("model-a")).status_code == 200
