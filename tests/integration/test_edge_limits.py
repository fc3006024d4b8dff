"""The HTTP edge against a real server (issue 10): 415 for bodies not sent as JSON (the browser hole),
413 for a 20 MB body with the server healthy after, the CORS allowlist, and a field name that tries to
forge a log line. Every error in the OpenAI envelope, never a 5xx."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MODEL, RunningServer, start_server, stop_server

ALLOWED = "http://localhost:5173"
OTHER = "https://evil.example"
CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("edge"), "--cors-origins", ALLOWED, "--log-level", "info")
    yield running
    stop_server(running)


def envelope(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def healthy(server: RunningServer) -> bool:
    return httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_cross_origin_simple_post_is_refused(edge_server: RunningServer) -> None:
    """What a web page can send without a preflight: text/plain, a form type, or no type at all."""
    url = f"{edge_server.base_url}/chat/completions"
    body = httpx.Request("POST", url, json=CHAT_BODY).content
    for headers in (
        {"content-type": "text/plain;charset=UTF-8"},
        {"content-type": "application/x-www-form-urlencoded"},
        {},
    ):
        r = httpx.post(url, content=body, headers={"origin": OTHER, **headers}, timeout=30)
        assert envelope(r, 415)["code"] == "unsupported_media_type"
        assert "access-control-allow-origin" not in r.headers
    r = httpx.post(url, json=CHAT_BODY, headers={"origin": OTHER}, timeout=120)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def _raw_post_headers_only(server: RunningServer, path: str, length: int) -> bytes:
    """Declare a body of `length` bytes, send none of it, and read what the server answers."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        sock.sendall(head.encode())
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_20_mb_body_is_413_before_it_is_read(edge_server: RunningServer) -> None:
    # The answer comes although not one byte of the 20 MB was sent: decided from Content-Length.
    raw = _raw_post_headers_only(edge_server, "/v1/chat/completions", 20 << 20)
    assert raw.startswith(b"HTTP/1.1 413"), raw[:200]
    assert b'"code":"request_too_large"' in raw.replace(b" ", b"")
    # A client that sends it all (httpx) gets the same envelope; a chunked upload is counted as it streams.
    big = b'{"model":"' + MODEL.encode() + b'","prompt":"' + b"x" * (20 << 20) + b'"}'
    url = f"{edge_server.base_url}/completions"
    r = httpx.post(url, content=big, headers={"content-type": "application/json"}, timeout=60)
    assert envelope(r, 413)["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    r = httpx.post(url, content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert envelope(r, 413)["code"] == "request_too_large"
    assert healthy(edge_server)
    r = httpx.post(f"{edge_server.base_url}/chat/completions", json=CHAT_BODY, timeout=120)
    assert r.status_code == 200, r.text


def test_cors_allowlist(edge_server: RunningServer) -> None:
    url = f"{edge_server.base_url}/chat/completions"
    ask = {"access-control-request-method": "POST", "access-control-request-headers": "content-type,authorization"}
    r = httpx.options(url, headers={"origin": ALLOWED, **ask}, timeout=10)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED
    assert "access-control-allow-credentials" not in r.headers
    r = httpx.options(url, headers={"origin": OTHER, **ask}, timeout=10)
    assert envelope(r, 400)["code"] == "cors_disallowed"
    assert "access-control-allow-origin" not in r.headers
    r = httpx.post(url, json=CHAT_BODY, headers={"origin": ALLOWED}, timeout=120)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


def test_field_name_with_a_newline_cannot_forge_a_log_line(edge_server: RunningServer) -> None:
    marker = f"FORGED-{uuid.uuid4().hex}"
    name = f"x\n2026-01-01 00:00:00,000 ERROR gateway.app: {marker}\r\n"
    r = httpx.post(f"{edge_server.base_url}/chat/completions", json={**CHAT_BODY, name: 1}, timeout=120)
    assert r.status_code == 200, r.text
    log = Path(edge_server.log).read_text(encoding="utf-8", errors="replace")
    lines = [line for line in log.splitlines() if marker in line]
    assert len(lines) == 1, lines  # one line, escaped, not a line of its own
    assert "ignoring unknown fields" in lines[0] and not lines[0].startswith("2026-01-01")
    assert "\\n" in lines[0]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_without_a_json_header_is_told_what_to_send(edge_server: RunningServer) -> None:
    body = f'{{"model":"{MODEL}","messages":[{{"role":"user","content":"Hi"}}],"max_tokens":2}}'
    url = f"{edge_server.base_url}/chat/completions"
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", url, "-d", body], capture_output=True, text=True, timeout=60
    )
    text, status = out.stdout.rsplit("\n", 1)
    assert status == "415" and "Content-Type: application/json" in text
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", url, "-H", "Content-Type: application/json", "-d", body],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.rsplit("\n", 1)[1] == "200", out.stdout
