"""`kind: upstream`: a registry entry whose requests other OpenAI-compatible servers answer.

Loading one probes its replicas (health and `max_model_len`); it never fails for a replica that is down
(the entry is ready, and requests get the fallback or a 503 until a replica is back). Its handle is the
Forwarder the routes hand the request to (gateway/routes/forwarding.py).
"""

from __future__ import annotations

import time
from typing import Any

from gateway.specs import UpstreamSpec
from gateway.upstream.forward import Forwarder
from gateway.upstream.replicas import ReplicaPool

# Capabilities by name (the registry's constants are these strings; "embeddings" is served once the
# /v1/embeddings route asks, "tokenize" is vLLM's /tokenize where a replica has it).
UPSTREAM_CAPABILITIES = frozenset({"chat", "completion", "embeddings"})


class UpstreamHandle:
    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.pool = ReplicaPool(spec)
        self.forwarder = Forwarder(self.pool)

    @property
    def context_length(self) -> int | None:
        lengths = [r.context_length for r in self.pool.replicas if r.context_length]
        return min(lengths) if lengths else None  # replicas may differ: the smallest window fits them all

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        replicas = [r.describe(now) for r in self.pool.replicas]
        return {
            "upstream": {
                "healthy_replicas": sum(r["health"] == "up" for r in replicas),
                "replicas": replicas,
                "fallback": self.spec.fallback,
                "timeouts": self.spec.timeouts.model_dump(),
            }
        }

    def replica_series(self) -> list[dict[str, Any]]:
        """What /metrics shows per replica (gateway/metrics/upstream_metrics.py): /admin's description of each
        replica plus its latency histogram, read at scrape time."""
        now = time.monotonic()
        return [{**r.describe(now), "latency": r.latency} for r in self.pool.replicas]


class UpstreamKind:
    name = "upstream"
    capabilities = UPSTREAM_CAPABILITIES

    def load(self, spec: UpstreamSpec) -> UpstreamHandle:  # a worker thread: no event loop here
        handle = UpstreamHandle(spec)
        handle.pool.probe_all_sync()
        return handle

    async def start(self, handle: UpstreamHandle) -> None:
        """On the event loop once loaded: the active health checks start, and the pooled client is built now
        (its TLS context takes tens of ms, which the first burst of requests would otherwise wait for)."""
        handle.pool.start()
        handle.forwarder.open()

    async def unload(self, handle: UpstreamHandle) -> None:
        await handle.pool.stop()
        await handle.forwarder.close()  # in-flight relays end with an error event

    def describe(self, handle: UpstreamHandle) -> dict[str, Any]:
        return handle.describe()

    def context_length(self, handle: UpstreamHandle) -> int | None:
        return handle.context_length

    def size_bytes(self, spec: UpstreamSpec) -> int | None:
        return None  # no weights here
