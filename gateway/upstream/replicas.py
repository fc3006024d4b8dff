"""The replicas of one upstream entry: who is healthy, who is busy, and which one takes the next request.

Balancing is least-outstanding-requests weighted by `weight` (a replica with weight 2 is picked until it
holds twice the requests of a weight-1 one), among replicas that are up and not ejected. Health comes from
two sides: the active check (GET `health_path` every `health_interval`, on the event loop) and the requests
themselves (`eject_after` consecutive connect errors, timeouts or 5xx take a replica out for `cooldown`,
after which the health loop probes it before it takes traffic again).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from gateway.metrics.buckets import BucketCounts
from gateway.specs import UpstreamReplica, UpstreamSpec

logger = logging.getLogger(__name__)


REPLICA_STATES = ("up", "down", "ejected")  # what Replica.state returns


def base_url(url: str) -> str:
    """The replica's OpenAI base URL: `/v1` added when the URL has no path."""
    url = url.rstrip("/")
    return url if urlsplit(url).path else url + "/v1"


def shown_url(url: str) -> str:
    """The URL without user:password or query (for /admin and logs)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


@dataclass
class Replica:
    index: int
    url: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str  # the upstream's own id
    weight: float
    headers: dict[str, str]
    healthy: bool = True  # last known state (active check or the requests' outcomes)
    ejected_until: float = 0.0  # monotonic; passive ejection after eject_after consecutive failures
    consecutive_failures: int = 0
    outstanding: int = 0
    requests: int = 0
    errors: int = 0
    last_latency: float | None = None  # seconds of the last successful answer (to the first event when streamed)
    last_error: str | None = None
    last_check: float | None = None  # wall clock of the last health check
    context_length: int | None = None  # the upstream's max_model_len for `model`, when it reports one
    # seconds to each successful answer (to its first event when streamed): gantry_upstream_replica_latency_seconds
    latency: BucketCounts = field(default_factory=BucketCounts, repr=False)  # TTFT buckets

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until

    def state(self, now: float) -> str:
        if now < self.ejected_until:
            return "ejected"
        return "up" if self.healthy else "down"

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "url": shown_url(self.url),
            "model": self.model,
            "weight": self.weight,
            "health": self.state(now),
            "outstanding": self.outstanding,
            "requests": self.requests,
            "errors": self.errors,
            "consecutive_failures": self.consecutive_failures,
            "last_latency_seconds": None if self.last_latency is None else round(self.last_latency, 4),
            "last_error": self.last_error,
            "last_check": None if self.last_check is None else int(self.last_check),
        }


def _headers(replica: UpstreamReplica) -> dict[str, str]:
    key = replica.api_key.get_secret_value() if replica.api_key else None
    if key is None and replica.api_key_env:
        key = os.environ.get(replica.api_key_env)
        if key is None:
            raise ValueError(f"api_key_env {replica.api_key_env!r} is not set in the environment")
    return {"Authorization": f"Bearer {key}"} if key else {}


class ReplicaPool:
    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.replicas = [
            Replica(i, base_url(r.url), r.model or spec.name, r.weight, _headers(r))
            for i, r in enumerate(spec.replicas)
        ]
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    # ---- picking ------------------------------------------------------------------------------------
    def pick(self, exclude: set[int]) -> Replica | None:
        """The available replica with the fewest outstanding requests per unit of weight (ties at random)."""
        now = time.monotonic()
        candidates = [r for r in self.replicas if r.index not in exclude and r.available(now)]
        if not candidates:
            return None
        best = min((r.outstanding + 1) / r.weight for r in candidates)
        return random.choice([r for r in candidates if (r.outstanding + 1) / r.weight == best])

    def retry_after(self) -> int:
        """Seconds until a replica may be back: the nearest end of a cool-down, else the next health check."""
        now = time.monotonic()
        ends = [r.ejected_until - now for r in self.replicas if r.ejected_until > now]
        return max(1, round(min(ends) if ends else self.spec.health_interval))

    # ---- outcomes -----------------------------------------------------------------------------------
    def succeeded(self, replica: Replica, latency: float) -> None:
        replica.consecutive_failures, replica.last_latency, replica.healthy = 0, latency, True
        replica.latency.observe(latency)

    def failed(self, replica: Replica, error: str) -> None:
        """A connect error, timeout or 5xx: counts toward ejection."""
        replica.errors += 1
        replica.consecutive_failures += 1
        replica.last_error = error
        if replica.consecutive_failures >= self.spec.eject_after and time.monotonic() >= replica.ejected_until:
            replica.ejected_until = time.monotonic() + self.spec.cooldown
            logger.warning(
                "upstream %s: replica %s ejected for %g s after %d consecutive failures (%s)",
                self.spec.name,
                shown_url(replica.url),
                self.spec.cooldown,
                replica.consecutive_failures,
                error,
            )
            if self._wake is not None:
                self._wake.set()  # the health loop re-plans its wake-up for the end of this cool-down

    # ---- health checks ------------------------------------------------------------------------------
    def probe_all_sync(self) -> None:
        """First check at load time (in the loading thread): health and max_model_len of every replica."""
        with httpx.Client(timeout=self.spec.timeouts.connect) as client:
            for replica in self.replicas:
                try:
                    response = client.get(replica.url + self.spec.health_path, headers=replica.headers)
                    self._record_check(replica, response)
                except httpx.HTTPError as exc:
                    self._record_check(replica, exc)

    def _record_check(self, replica: Replica, outcome: httpx.Response | Exception) -> None:
        replica.last_check = time.time()
        was = replica.healthy
        if isinstance(outcome, Exception):
            replica.healthy, replica.last_error = False, f"health check: {type(outcome).__name__}: {outcome}"
        else:
            replica.healthy = outcome.is_success
            if not outcome.is_success:
                replica.last_error = f"health check: HTTP {outcome.status_code}"
            elif self.spec.health_path.rstrip("/") == "/models":
                replica.context_length = _max_model_len(outcome, replica.model) or replica.context_length
        if replica.healthy:
            replica.consecutive_failures, replica.ejected_until = 0, 0.0
        if was != replica.healthy:
            logger.warning(
                "upstream %s: replica %s is %s", self.spec.name, shown_url(replica.url), replica.state(time.monotonic())
            )

    def start(self) -> None:
        """Run the active health checks on this event loop until `stop`."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._health_loop(), name=f"upstream-health-{self.spec.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _health_loop(self) -> None:
        # a busy replica may answer its health route slowly: that is not down (its first_token bounds it)
        timeout = httpx.Timeout(max(5.0, min(self.spec.timeouts.first_token, 30.0)), connect=self.spec.timeouts.connect)
        async with httpx.AsyncClient(timeout=timeout) as client:
            next_round = time.monotonic() + self.spec.health_interval
            while True:
                now = time.monotonic()
                # replicas whose cool-down ended are probed at once, not at the next round
                due = [r for r in self.replicas if r.ejected_until and r.ejected_until <= now]
                if now >= next_round:
                    due, next_round = self.replicas, now + self.spec.health_interval
                if due:
                    await asyncio.gather(*(self._check(client, r) for r in due))
                    continue
                ends = [r.ejected_until for r in self.replicas if r.ejected_until > now]
                wake_at = min([next_round, *ends])
                assert self._wake is not None
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.01, wake_at - time.monotonic()))
                except TimeoutError:
                    pass

    async def _check(self, client: httpx.AsyncClient, replica: Replica) -> None:
        try:
            response = await client.get(replica.url + self.spec.health_path, headers=replica.headers)
            self._record_check(replica, response)
        except httpx.HTTPError as exc:
            self._record_check(replica, exc)
        if replica.ejected_until and not replica.healthy:  # probed after the cool-down and still down
            replica.ejected_until = 0.0  # stays `down` until a later check finds it up


def _max_model_len(response: httpx.Response, model: str) -> int | None:
    """vLLM, SGLang and Gantry put `max_model_len` on the model's card in GET /v1/models."""
    try:
        cards = response.json().get("data") or []
    except (ValueError, AttributeError):
        return None
    for card in cards:
        if isinstance(card, dict) and card.get("id") == model and isinstance(card.get("max_model_len"), int):
            return card["max_model_len"]
    return None
