"""A real `python -m gateway serve` on 127.0.0.1 with the real embedded SmolLM2 model, shared by the suite."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REPO_ROOT

MODEL = "smollm2-135m-instruct"
STARTUP_TIMEOUT = float(os.environ.get("GANTRY_TEST_STARTUP_TIMEOUT", "300"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def start_server(
    tmp_dir: Path, *args: str, env: dict[str, str] | None = None, module: str = "gateway", port: int | None = None
) -> RunningServer:
    """`python -m <module> serve`: the gateway, or a test wrapper around its CLI (the repo is on the path).
    `port`: a given one (a server restarted where its clients expect it), else a free one."""
    port = port or free_port()
    log = tmp_dir / f"server-{port}.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    child_env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path, **(env or {})})
    process = subprocess.Popen(
        [sys.executable, "-m", module, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=tmp_dir,  # no stray .env from the checkout
        env=child_env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = RunningServer(url=f"http://127.0.0.1:{port}", process=process, log=log)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT}s:\n{log.read_text()[-4000:]}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)
    assert REPO_ROOT.exists()


@pytest.fixture(scope="session")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture
def async_client(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120)


def chat(client: openai.OpenAI, content: str = "What is the capital of France?", **kwargs):
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 24)
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)


@pytest.fixture
def hub_client_reaches_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """`huggingface_hub.InferenceClient` refuses every URL under HF_HUB_OFFLINE=1 (which `make test` sets so that
    nothing downloads weights), even 127.0.0.1: let it reach our own server for the test's duration. Model
    loading in the servers stays offline (their environment is their own)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
