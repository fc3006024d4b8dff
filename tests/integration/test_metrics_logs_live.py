"""/metrics and the logs of a real server, driven by the openai SDK.

A known workload (3 chats, 2 streams with include_usage, 1 completion, 1 unknown model) moves the request and token
counters by exactly what the SDK saw and the TTFT histogram by the number of generations; the access log has one
line per request; a distinctive prompt never reaches the log at default settings and does with
GANTRY_LOG_PROMPTS=true (a second server, which also logs JSON lines and runs prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import MODEL, RunningServer, start_server, stop_server

SECRET = "pelican-vortex-5521"
CHAT = "/v1/chat/completions"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: RunningServer) -> Samples:
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def settled(server: RunningServer, done: Callable[[Samples], bool], timeout: float = 30) -> Samples:
    """Scrape until `done` (a request is counted just after its last byte reaches the client)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def log_lines(server: RunningServer, needle: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.log.read_text(errors="replace").splitlines() if needle in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def sdk(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, request_id: str, content: str, **kwargs):
    kwargs.setdefault("max_tokens", 4)
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        extra_headers={"x-request-id": request_id},
        **kwargs,
    )


def test_known_workload_moves_the_counters_exactly(server: RunningServer) -> None:
    client = sdk(server)
    before = scrape(server)
    usages = []
    for i in range(3):
        usages.append(ask(client, f"mt-chat-{i}", f"{SECRET} question {i}").usage)
    for i in range(2):
        chunks = list(ask(client, f"mt-stream-{i}", SECRET, stream=True, stream_options={"include_usage": True}))
        usages.append(chunks[-1].usage)
    usages.append(
        client.completions.create(
            model=MODEL, prompt=f"{SECRET} once upon", max_tokens=3, extra_headers={"x-request-id": "mt-completion"}
        ).usage
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    prompt_tokens = sum(u.prompt_tokens for u in usages)
    completion_tokens = sum(u.completion_tokens for u in usages)
    assert prompt_tokens > 0 and completion_tokens > 0

    def moved(name: str, **labels: str) -> Callable[[Samples], float]:
        return lambda samples: value(samples, name, **labels) - value(before, name, **labels)

    chats = moved("gantry_requests_total", model=MODEL, route=CHAT, status="200")
    after = settled(server, lambda s: chats(s) >= 5)
    assert chats(after) == 5
    assert moved("gantry_requests_total", model=MODEL, route="/v1/completions", status="200")(after) == 1
    assert moved("gantry_requests_total", model="none", route=CHAT, status="404")(after) == 1
    assert moved("gantry_prompt_tokens_total", model=MODEL)(after) == prompt_tokens
    assert moved("gantry_generation_tokens_total", model=MODEL)(after) == completion_tokens
    assert moved("gantry_time_to_first_token_seconds_count", model=MODEL)(after) == 6
    assert moved("gantry_e2e_request_latency_seconds_count", model=MODEL)(after) == 6
    assert moved("gantry_request_queue_time_seconds_count", model=MODEL)(after) == 6
    # every generated token after a sequence's first one is one inter-token interval
    assert 0 < moved("gantry_inter_token_latency_seconds_count", model=MODEL)(after) <= completion_tokens - 6
    assert value(after, "gantry_model_state", model=MODEL, state="ready") == 1
    assert value(after, "gantry_model_load_seconds", model=MODEL) > 0
    assert value(after, "gantry_sequences_running", model=MODEL) == 0
    assert value(after, "gantry_kv_cache_usage_bytes", model=MODEL) >= 0
    # startup and the model's load each ended with a full collection (then froze the heap), timed
    assert value(after, "gantry_gc_pause_seconds_count", generation="2") >= 2
    assert value(after, "gantry_gc_pause_seconds_sum", generation="2") > 0

    # one access line per request, with its model, status and tokens; none of uvicorn's own
    (line,) = log_lines(server, "request_id='mt-chat-0'")
    assert f"model='{MODEL}'" in line and " 200 " in line
    assert f"prompt_tokens={usages[0].prompt_tokens} completion_tokens={usages[0].completion_tokens}" in line
    assert len(log_lines(server, "request_id='mt-stream-1'")) == 1
    log = server.log.read_text(errors="replace")
    assert '"POST /v1/chat/completions HTTP/1.1"' not in log
    assert SECRET not in log  # default settings: prompts and outputs are never logged


@pytest.fixture(scope="module")
def prompt_logging_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("prompts")
    multiproc = tmp / "prometheus"
    multiproc.mkdir()
    env = {"GANTRY_LOG_PROMPTS": "true", "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    running = start_server(tmp, "--log-format", "json", env=env)
    yield running
    stop_server(running)


def test_log_prompts_logs_the_prompt_as_json_lines(prompt_logging_server: RunningServer) -> None:
    server = prompt_logging_server
    reply = ask(sdk(server), "mt-secret", f"Repeat {SECRET}")
    (line,) = log_lines(server, '"logger": "gateway.prompts"')
    entry = json.loads(line)
    assert entry["request_id"] == "mt-secret" and SECRET in entry["prompt"]
    assert entry["outputs"] == [reply.choices[0].message.content]
    (access,) = [json.loads(x) for x in log_lines(server, '"logger": "gateway.access"') if "mt-secret" in x]
    assert (access["model"], access["status"], access["route"]) == (MODEL, 200, CHAT)
    assert (access["prompt_tokens"], access["completion_tokens"]) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert access["ttft_seconds"] > 0 and access["duration_seconds"] >= access["ttft_seconds"]
    assert any(json.loads(x)["logger"].startswith("uvicorn") for x in log_lines(server, '"logger": "uvicorn'))

    # multiprocess mode: counters come from the directory's files, gauges carry the process id
    samples = settled(server, lambda s: value(s, "gantry_requests_total", model=MODEL, route=CHAT, status="200") >= 1)
    assert value(samples, "gantry_requests_total", model=MODEL, route=CHAT, status="200") == 1
    assert any(Path(server.log).parent.joinpath("prometheus").glob("*.db"))
    pid = str(server.process.pid)
    assert value(samples, "gantry_model_state", model=MODEL, state="ready", pid=pid) == 1
