"""Upstream entries without servers: the spec, error normalisation, weighted least-outstanding picking and
passive ejection (the live behaviour is in tests/integration/test_upstream_*.py)."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from pydantic import ValidationError

from gateway.metrics.upstream_metrics import replica_families
from gateway.specs import UpstreamSpec, parse_spec
from gateway.upstream.errors import error_fields, relayed_error, stream_error_event
from gateway.upstream.kind import UpstreamHandle
from gateway.upstream.replicas import ReplicaPool, base_url, shown_url


def spec(**extra) -> UpstreamSpec:
    data = {"name": "remote", "kind": "upstream", "replicas": [{"url": "http://a:1"}, {"url": "http://b:1/v1"}]}
    return parse_spec({**data, **extra})  # type: ignore[return-value]


def test_spec_parses_durations_defaults_and_refuses_unknown_keys() -> None:
    parsed = spec(timeouts={"connect": "2s", "total": "5m"}, cooldown="1m")
    assert isinstance(parsed, UpstreamSpec)
    assert parsed.timeouts.connect == 2 and parsed.timeouts.total == 300 and parsed.cooldown == 60
    assert parsed.preload is True and parsed.keep_alive == -1
    with pytest.raises(ValidationError):
        spec(replicas=[{"url": "http://a:1", "wieght": 2}])
    with pytest.raises(ValidationError):
        spec(replicas=[])


def test_urls_get_v1_and_lose_credentials_when_shown() -> None:
    assert base_url("http://a:8000") == "http://a:8000/v1"
    assert base_url("http://a:8000/v1/") == "http://a:8000/v1"
    assert base_url("http://a:8000/openai/v1") == "http://a:8000/openai/v1"
    assert shown_url("http://user:pw@a:8000/v1?token=x") == "http://a:8000/v1"


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_TEST_KEY", "sk-env")
    pool = ReplicaPool(spec(replicas=[{"url": "http://a:1", "api_key_env": "UPSTREAM_TEST_KEY"}]))
    assert pool.replicas[0].headers == {"Authorization": "Bearer sk-env"}
    monkeypatch.delenv("UPSTREAM_TEST_KEY")
    with pytest.raises(ValueError, match="UPSTREAM_TEST_KEY"):
        ReplicaPool(spec(replicas=[{"url": "http://a:1", "api_key_env": "UPSTREAM_TEST_KEY"}]))


def test_least_outstanding_honours_weights() -> None:
    pool = ReplicaPool(spec(replicas=[{"url": "http://a:1"}, {"url": "http://b:1", "weight": 2}]))
    picks = Counter()
    for _ in range(30):  # requests that stay open: the heavier replica ends up holding twice as many
        replica = pool.pick(set())
        assert replica is not None
        replica.outstanding += 1
        picks[replica.index] += 1
    assert picks == {0: 10, 1: 20}
    assert pool.pick({0, 1}) is None


def test_consecutive_failures_eject_for_the_cooldown_then_success_resets() -> None:
    pool = ReplicaPool(spec(eject_after=2, cooldown=60))
    first, second = pool.replicas
    pool.failed(first, "connect refused")
    assert first.available(time.monotonic())  # one failure is not enough
    pool.failed(first, "connect refused")
    assert first.state(time.monotonic()) == "ejected"
    assert all(pool.pick(set()) is second for _ in range(5))
    assert 55 <= pool.retry_after() <= 60
    pool.succeeded(second, 0.1)
    assert second.consecutive_failures == 0 and second.last_latency == 0.1


def test_errors_of_every_shape_become_the_envelope_fields() -> None:
    envelope = b'{"error": {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"}}'
    assert error_fields(400, envelope)["code"] == "context_length_exceeded"
    detail = b'{"detail": [{"loc": ["body", "n"], "msg": "Input should be a valid integer"}]}'
    assert error_fields(422, detail)["message"] == "n: Input should be a valid integer"
    assert error_fields(404, b'{"detail": "Not Found"}')["message"] == "Not Found"
    assert error_fields(400, b'{"error": "bad grammar"}')["message"] == "bad grammar"
    assert error_fields(500, b"Internal Server Error")["message"] == "Internal Server Error"
    assert error_fields(502, b"")["message"] == "The upstream answered HTTP 502."
    relayed = relayed_error(422, detail, None)
    assert relayed.status_code == 400 and relayed.to_dict()["error"]["type"] == "invalid_request_error"


def test_stream_errors_are_recognised_but_chunks_are_not() -> None:
    assert stream_error_event({"choices": [], "model": "m"}) is None
    event = stream_error_event({"detail": "engine died"})
    assert event == {"error": {"message": "engine died", "type": "upstream_error", "param": None, "code": None}}


def test_replica_series_reach_prometheus_exposition() -> None:
    """Requests, errors, health state and latency per replica, as a scrape renders them."""
    handle = UpstreamHandle(spec(eject_after=1, cooldown=60))
    first, second = handle.pool.replicas
    for latency in (0.004, 0.3, 7.0):
        first.requests += 1
        handle.pool.succeeded(first, latency)
    second.requests += 1
    handle.pool.failed(second, "connect error")

    class Scraped(Collector):
        def collect(self):
            return replica_families([SimpleNamespace(name="remote", served=handle)], pid=None)

    registry = CollectorRegistry()
    registry.register(Scraped())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }

    def value(name: str, replica: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"model": "remote", "replica": replica, **labels}.items())))]

    a, b = "http://a:1/v1", "http://b:1/v1"
    assert value("gantry_upstream_replica_requests_total", a) == 3
    assert value("gantry_upstream_replica_errors_total", b) == 1
    assert value("gantry_upstream_replica_state", a, state="up") == 1
    assert value("gantry_upstream_replica_state", b, state="ejected") == 1
    assert value("gantry_upstream_replica_state", b, state="up") == 0
    assert value("gantry_upstream_replica_latency_seconds_bucket", a, le="0.005") == 1
    assert value("gantry_upstream_replica_latency_seconds_bucket", a, le="0.5") == 2
    assert value("gantry_upstream_replica_latency_seconds_bucket", a, le="+Inf") == 3
    assert value("gantry_upstream_replica_latency_seconds_count", a) == 3
    assert value("gantry_upstream_replica_latency_seconds_sum", a) == pytest.approx(7.304)
    assert value("gantry_upstream_replica_latency_seconds_count", b) == 0


async def test_a_pooled_connection_the_replica_closed_is_sent_again(anyio_backend: str) -> None:
    """A replica that answers one request per connection and hangs up on the next (as a server closing an
    idle keep-alive connection): the second request reuses the pooled connection, loses it, and is sent
    again on a fresh one instead of failing as 'unreachable'."""
    import asyncio

    import httpx
    from httpx_aiohttp import AiohttpTransport

    from gateway.upstream.forward import _send

    seen: list[int] = []  # per request: which request of its connection it was

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for nth in (1, 2):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:  # the client closed the connection
                break
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            seen.append(nth)
            if nth == 2:
                break  # hang up with no answer
            body = b'{"ok": true}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        for _ in range(2):
            response = await _send(client, client.build_request("POST", url, content=b"{}"))
            assert response.status_code == 200 and (await response.aread()) == b'{"ok": true}'
            await response.aclose()
        sends = []
        original = client.send
        client.send = lambda *args, **kwargs: sends.append(1) or original(*args, **kwargs)  # type: ignore[method-assign]
        with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)):  # nothing listens: refused ...
            await _send(client, client.build_request("POST", "http://127.0.0.1:9/v1/chat/completions", content=b"{}"))
        assert len(sends) == 1  # ... and not sent again
    server.close()
    await server.wait_closed()
    assert seen == [1, 2, 1]  # the second request reached the closed connection, then a new one
