"""Many models behind one real server (embedded SmolLM2 entries): lazy load, 503 model_loading while loading,
x-wait-for-model, one load for concurrent first requests, keep_alive, failed-load isolation and a fixed path,
the admin API and CLI, registrations surviving a restart, /admin absent without a key. One server per phase."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.integration.conftest import RunningServer, start_server, stop_server

KEY = "integration-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT = {"x-wait-for-model": "true"}
USER = [{"role": "user", "content": "Say hi."}]
ADMIN_ROUTES = [
    ("GET", "/admin/models"),
    ("POST", "/admin/models"),
    ("POST", "/admin/models/smol/load"),
    ("POST", "/admin/models/smol/unload"),
    ("DELETE", "/admin/models/smol"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("many-models")


@pytest.fixture(scope="module")
def models_file(workdir: Path) -> Path:
    path = workdir / "models.yaml"
    models = [
        {"name": "smol", "source": "embedded"},
        {"name": "smol-lazy", "source": "embedded", "keep_alive": "2s"},
        {"name": "fixable", "source": str(workdir / "later" / "model.gguf"), "family": "smollm2"},
    ]
    path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(workdir: Path, models_file: Path):
    running = start_server(workdir, "--models-file", str(models_file), env={"GANTRY_ADMIN_KEY": KEY})
    yield running
    stop_server(running)


def admin_models(server: RunningServer) -> dict[str, dict]:
    r = httpx.get(f"{server.url}/admin/models", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return {row["id"]: row for row in r.json()["data"]}


def chat(server: RunningServer, model: str, headers: dict | None = None, **body) -> httpx.Response:
    body = {"model": model, "messages": USER, "max_tokens": 4, "temperature": 0, **body}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=headers or {}, timeout=300)


def wait_for_state(server: RunningServer, model: str, state: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = admin_models(server)[model]
        if row["state"] == state:
            return row
        time.sleep(0.3)
    raise AssertionError(f"{model} never reached {state}: {admin_models(server)[model]}")


def cli(server: RunningServer, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "gateway", "models", "--url", server.url]
    command += ["--admin-key", key] if key else []
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=600, env=os.environ.copy())


def test_lazy_model_503_then_wait_then_shared_loads(server: RunningServer) -> None:
    listed = httpx.get(f"{server.base_url}/models", timeout=30).json()["data"]
    assert {card["id"]: card["status"] for card in listed} == {
        "smol": "ready",
        "smol-lazy": "unloaded",
        "fixable": "unloaded",
    }
    r = chat(server, "smol-lazy")  # starts the load
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "model_loading" and error["type"] == "service_unavailable"
    assert {"message", "type", "param", "code"} <= set(error) and error["estimated_time"] > 0
    assert int(r.headers["retry-after"]) >= 1
    card = httpx.get(f"{server.base_url}/models/smol-lazy", timeout=30).json()
    assert card["status"] in ("loading", "ready")
    r = chat(server, "smol-lazy", WAIT)
    assert r.status_code == 200, r.text
    assert admin_models(server)["smol-lazy"]["loads"] == 1

    assert httpx.post(f"{server.url}/admin/models/smol-lazy/unload", headers=AUTH, timeout=60).status_code == 200
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: chat(server, "smol-lazy", WAIT), range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    assert admin_models(server)["smol-lazy"]["loads"] == 2  # ten first requests, one load


def test_keep_alive_unloads_the_idle_model_and_frees_memory(server: RunningServer) -> None:
    assert chat(server, "smol-lazy", WAIT).status_code == 200
    loaded = psutil.Process(server.process.pid).memory_info().rss
    row = wait_for_state(server, "smol-lazy", "unloaded", timeout=60)  # keep_alive: 2s
    freed = loaded - psutil.Process(server.process.pid).memory_info().rss
    assert freed > 100 * 2**20, f"RSS fell by only {freed / 2**20:.0f} MiB"
    assert row["memory_bytes"] and row["memory_bytes"] > 0
    time.sleep(1)
    assert admin_models(server)["smol"]["state"] == "ready"  # the default keep_alive is -1: never


def test_broken_path_is_failed_while_the_other_serves_and_load_after_fixing_it(
    server: RunningServer, workdir: Path
) -> None:
    r = chat(server, "fixable", WAIT)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
    row = admin_models(server)["fixable"]
    assert row["state"] == "failed" and row["error"]
    card = httpx.get(f"{server.base_url}/models/fixable", timeout=30).json()
    assert card["status"] == "failed" and card["details"]["error"] == row["error"]
    assert chat(server, "smol").status_code == 200

    from gateway.engine.loader import embedded_gguf_path

    (workdir / "later").mkdir()
    (workdir / "later" / "model.gguf").symlink_to(embedded_gguf_path())  # the path now exists
    r = httpx.post(f"{server.url}/admin/models/fixable/load", headers=AUTH, timeout=300)
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text
    assert chat(server, "fixable").status_code == 200


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_need_the_key(server: RunningServer, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.request(method, f"{server.url}{path}", headers=headers, json={"name": "x", "source": "y"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert cli(server, "list", key=None).returncode == 1


def test_cli_add_use_restart_remove_and_no_admin_without_key(
    server: RunningServer, workdir: Path, models_file: Path
) -> None:
    added = cli(server, "add", "runtime-smol", "embedded", "--set", "aliases=[rs]", "--set", "keep_alive=5m")
    assert added.returncode == 0, added.stderr
    assert "runtime-smol" in added.stdout and "unloaded" in added.stdout
    loaded = cli(server, "load", "rs")
    assert loaded.returncode == 0 and "ready" in loaded.stdout, loaded.stderr
    assert chat(server, "rs").status_code == 200
    listing = cli(server, "list")
    assert re.search(r"^runtime-smol\s+local\s+ready", listing.stdout, re.M), listing.stdout
    state = json.loads((workdir / "models.state.json").read_text())  # beside the models file by default
    assert [s["name"] for s in state["added"]] == ["runtime-smol"]
    unloaded = cli(server, "unload", "runtime-smol")
    assert unloaded.returncode == 0 and "unloaded" in unloaded.stdout

    stop_server(server)  # restart without an admin key: the registration is still there, /admin is absent
    plain = start_server(workdir, "--models-file", str(models_file))
    try:
        ids = [card["id"] for card in httpx.get(f"{plain.base_url}/models", timeout=30).json()["data"]]
        assert "runtime-smol" in ids and "rs" in ids
        assert chat(plain, "runtime-smol", WAIT).status_code == 200
        for method, path in ADMIN_ROUTES:
            r = httpx.request(method, f"{plain.url}{path}", headers=AUTH, json={"name": "x", "source": "y"})
            assert r.status_code == 404, (method, path, r.status_code)
        assert cli(plain, "list").returncode == 1
    finally:
        stop_server(plain)

    again = start_server(workdir, "--models-file", str(models_file), env={"GANTRY_ADMIN_KEY": KEY})
    try:
        removed = cli(again, "remove", "runtime-smol")
        assert removed.returncode == 0 and "removed runtime-smol" in removed.stdout, removed.stderr
        ids = [card["id"] for card in httpx.get(f"{again.base_url}/models", timeout=30).json()["data"]]
        assert "runtime-smol" not in ids
        assert chat(again, "runtime-smol").status_code == 404
        assert json.loads((workdir / "models.state.json").read_text())["added"] == []
    finally:
        stop_server(again)
