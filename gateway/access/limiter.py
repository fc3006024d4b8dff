"""Per-key limits: requests and tokens per window, and requests in flight, with OpenAI's rate-limit headers.

Counting uses the `limits` library (memory in this process, or Redis shared by every replica):
- requests: a moving window (exact: the 6th request within the window of an rpm-5 key is refused);
- tokens: a sliding window counter (constant memory whatever the budget; a moving window keeps one entry
  per token). Tokens are only known once a request has run, so admission checks that some budget is
  left, and the tokens the RequestRecord counted are charged when the response ends (capped at what is
  left: the library cannot go into overdraft, so an overrunning request empties the budget);
- requests in flight: a counter in this process with memory storage; with Redis a sorted set of running
  requests per key (Lua, atomic), each entry expiring after a lease time, so a replica that dies holding
  slots gives them back instead of locking the key for good.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from gateway.access.principal import KeyLimits
from gateway.errors import LimitStorageUnavailableError, RateLimitError

logger = logging.getLogger(__name__)

CONCURRENCY_LEASE_SECONDS = 3600.0  # a Redis slot of a replica that died is freed after this long


def duration(seconds: float) -> str:
    """OpenAI's reset header format: `1s`, `6m0s`, `1h2m3s` (fractions below 10 s as `1.5s`)."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{math.ceil(seconds * 10) / 10:g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass
class Admission:
    """An admitted request: the x-ratelimit-* headers for its response, and what to undo when it ends."""

    headers: dict[str, str] = field(default_factory=dict)
    release: Callable[[], Awaitable[None]] | None = None


class MemoryConcurrency:
    def __init__(self) -> None:
        self._running: dict[str, int] = {}

    async def acquire(self, name: str, limit: int) -> Callable[[], Awaitable[None]] | None:
        if self._running.get(name, 0) >= limit:
            return None
        self._running[name] = self._running.get(name, 0) + 1

        async def release() -> None:
            self._running[name] -= 1
            if not self._running[name]:
                del self._running[name]

        return release


_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisConcurrency:
    """Requests in flight per key across replicas: a sorted set of request ids scored by their lease's end."""

    def __init__(self, uri: str, lease_seconds: float) -> None:
        import redis.asyncio

        self._redis = redis.asyncio.from_url(uri)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self.lease_seconds = lease_seconds

    async def acquire(self, name: str, limit: int) -> Callable[[], Awaitable[None]] | None:
        key, member, now = f"gantry:concurrency:{name}", uuid.uuid4().hex, time.time()
        args = [now, now + self.lease_seconds, limit, member, math.ceil(self.lease_seconds) + 60]
        if not await self._acquire(keys=[key], args=args):
            return None

        async def release() -> None:
            await self._redis.zrem(key, member)

        return release


class RateLimiter:
    def __init__(self, storage_uri: str, window_seconds: int, *, lease_seconds: float | None = None) -> None:
        self.window = window_seconds
        if storage_uri.startswith(("redis://", "rediss://")):
            storage = storage_from_string("async+" + storage_uri, implementation="redispy")
            self.concurrency: MemoryConcurrency | RedisConcurrency = RedisConcurrency(
                storage_uri, lease_seconds or CONCURRENCY_LEASE_SECONDS
            )
        elif storage_uri.startswith("memory://"):
            storage = MemoryStorage()
            self.concurrency = MemoryConcurrency()
        else:
            raise ValueError(f"rate_limit_storage must be memory:// or redis://…, not {storage_uri!r}")
        self.requests = MovingWindowRateLimiter(storage)
        self.tokens = SlidingWindowCounterRateLimiter(storage)

    def _item(self, amount: int, what: str) -> RateLimitItem:
        # separate namespaces: an rpm and a tpm of the same amount must not share a counter
        return RateLimitItemPerSecond(amount, self.window, namespace=f"gantry-{what}")

    async def admit(self, name: str, limits: KeyLimits) -> Admission:
        """Admit a request of key `name` or raise RateLimitError (429) naming the limit it hit; 503 when the
        storage cannot be reached (limits are never skipped silently)."""
        try:
            return await self._admit(name, limits)
        except RateLimitError:
            raise
        except Exception as exc:  # redis-py / limits raise several types for an unreachable server
            logger.error("rate-limit storage unavailable (%s): refusing key %s's request", type(exc).__name__, name)
            raise LimitStorageUnavailableError("The rate-limit storage is unavailable; retry shortly.") from exc

    async def _admit(self, name: str, limits: KeyLimits) -> Admission:
        headers: dict[str, str] = {}
        now = time.time()
        if limits.tpm is not None:
            item = self._item(limits.tpm, "tokens")
            stats = await self.tokens.get_window_stats(item, name)
            headers |= _headers("tokens", limits.tpm, stats.remaining, stats.reset_time - now)
            if stats.remaining <= 0:
                raise self._refuse(name, "tokens per minute", stats.reset_time - now, headers, limits)
        release = None
        if limits.max_concurrent is not None:
            release = await self.concurrency.acquire(name, limits.max_concurrent)
            if release is None:
                raise self._refuse(name, "concurrent requests", 1.0, headers, limits)
        if limits.rpm is not None:
            item = self._item(limits.rpm, "requests")
            admitted = await self.requests.hit(item, name)
            stats = await self.requests.get_window_stats(item, name)
            headers |= _headers("requests", limits.rpm, stats.remaining, stats.reset_time - time.time())
            if not admitted:
                if release is not None:
                    await release()
                raise self._refuse(name, "requests per minute", stats.reset_time - time.time(), headers, limits)
        return Admission(headers=headers, release=release)

    def _refuse(self, name: str, what: str, wait: float, headers: dict[str, str], limits: KeyLimits) -> RateLimitError:
        per = "" if self.window == 60 else f" (window {self.window} s)"
        limit = {"tokens per minute": limits.tpm, "requests per minute": limits.rpm}.get(what, limits.max_concurrent)
        return RateLimitError(
            f"Rate limit reached for API key `{name}`: {what}{per}, limit {limit}. Retry after Retry-After seconds.",
            retry_after=max(1, math.ceil(wait)),
            rate_headers=headers,
        )

    async def charge(self, name: str, limits: KeyLimits, tokens: int) -> None:
        """Count a finished request's tokens against the key's tpm."""
        if limits.tpm is None or tokens <= 0:
            return
        item = self._item(limits.tpm, "tokens")
        try:
            for _ in range(3):  # another request may charge between reading what is left and charging it
                left = (await self.tokens.get_window_stats(item, name)).remaining
                if left <= 0 or await self.tokens.hit(item, name, cost=min(tokens, left)):
                    return
        except Exception as exc:  # the answer is already on its way: count what we can, never fail it
            logger.error(
                "rate-limit storage unavailable (%s): %d tokens of key %s not counted", type(exc).__name__, tokens, name
            )


def _headers(what: str, limit: int, remaining: int, reset_seconds: float) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{what}": str(limit),
        f"x-ratelimit-remaining-{what}": str(max(0, remaining)),
        f"x-ratelimit-reset-{what}": duration(reset_seconds),
    }
