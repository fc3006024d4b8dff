"""Forward a request to a replica of an upstream entry and relay its answer in our contract.

The client's JSON body goes out unchanged except `model` (the replica's own id), so vLLM/SGLang extras
pass through. A stream is relayed event by event as it arrives (nothing is buffered), with the
client-facing `model` in every chunk; our SSE framing adds the `[DONE]` some servers omit. Before
anything reaches the client the answer can still change replica: a connect error, a timeout or a 5xx
is retried once on another one. After the first byte the stream is committed: a failure then ends it
with an error event. Closing the relay (client gone) closes the upstream response, so the replica sees
the disconnect and aborts the sequence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.accounting import count_tokens, current_record, mark_first_token
from gateway.upstream.errors import (
    BadUpstreamError,
    RelayedError,
    UpstreamFailure,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    relayed_error,
    stream_error_event,
)
from gateway.upstream.replicas import Replica, ReplicaPool, shown_url

logger = logging.getLogger(__name__)
# httpx logs every request at INFO: a line per forwarded request and per health check would drown the log
# (requests have their own access log; failures are logged here at WARNING).
logging.getLogger("httpx").setLevel(logging.WARNING)

ATTEMPTS = 2  # the first replica, then once on another
PATHS = {"chat": "/chat/completions", "completion": "/completions", "embeddings": "/embeddings"}


@dataclass
class _Failure:
    kind: str  # unreachable | timeout | bad
    message: str
    retry_after: str | None = None


class _Retryable(Exception):
    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass
class _OpenStream:
    replica: Replica
    response: httpx.Response
    events: AsyncIterator[str]
    first: str
    started: float


async def _send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send the request; once more when a pooled keep-alive connection turned out closed by the replica.

    A replica may close an idle connection (keep-alive timeout, or after it answered an error) just as the
    pool hands it out: writing the body then fails, or the replica hangs up with no answer. aiohttp reports
    both as a connection error (httpx-aiohttp maps it to ConnectTimeout) and it is not the replica being
    down: a fresh connection answers (seen with `transformers serve` after a bare 500: a 503 for one request).
    Refused connections and real timeouts are other types and fail over as before.
    """
    try:
        return await client.send(request, stream=True)
    except httpx.ConnectTimeout as exc:
        cause = exc.__cause__
        stale = isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
            cause, aiohttp.ClientConnectorError | aiohttp.ServerTimeoutError
        )
        if not stale:
            raise
        logger.debug("a pooled connection to %s was closed (%s): sending again", shown_url(str(request.url)), cause)
    return await client.send(request, stream=True)


class Forwarder:
    """One per loaded upstream entry: a pooled httpx client (created on the event loop) and the replicas."""

    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool
        self.spec = pool.spec
        self._client: httpx.AsyncClient | None = None

    def open(self) -> httpx.AsyncClient:
        """The pooled client, built on first use; on the event loop (not in the loading thread)."""
        if self._client is None:
            t = self.spec.timeouts
            # httpx's API on aiohttp's connection pool (httpx-aiohttp, as LiteLLM does). With httpcore's pool a
            # burst of 8 requests reached the replica 3-10 ms apart, beyond its coalescing window, and ≤3 ms
            # apart with this one; a lone request's front median went 4.6 -> 4.2 ms (direct: ~2 ms).
            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(t.total, connect=t.connect), transport=AiohttpTransport(limits=limits)
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- entry point --------------------------------------------------------------------------------
    async def stream(self, capability: str, body: dict[str, Any], model_id: str) -> AsyncIterator[str]:
        """Open the stream (retrying before the first byte), then an iterator of chunk JSON strings.
        Raises before returning: the client then gets a plain HTTP error, not a broken stream."""
        payload = dict(body)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if self.spec.stream_usage and not wants_usage and capability in ("chat", "completion"):
            payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        opened = await self._open(capability, payload, stream=True)
        return self._relay(opened, model_id, wants_usage)

    async def complete(self, capability: str, body: dict[str, Any], model_id: str) -> dict[str, Any]:
        answer = await self._open(capability, dict(body), stream=False)
        if isinstance(answer.get("model"), str):
            answer["model"] = model_id
        usage = answer.get("usage")
        if isinstance(usage, dict):
            count_tokens(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
        return answer

    # ---- attempts -----------------------------------------------------------------------------------
    async def _open(self, capability: str, payload: dict[str, Any], *, stream: bool) -> Any:
        tried: set[int] = set()
        failures: list[_Failure] = []
        for _ in range(ATTEMPTS):
            replica = self.pool.pick(tried)
            if replica is None:
                break
            tried.add(replica.index)
            replica.outstanding += 1
            replica.requests += 1
            started = time.monotonic()
            kept = False
            try:
                limit = self.spec.timeouts.first_token if stream else self.spec.timeouts.total
                async with asyncio.timeout(limit):
                    outcome = await self._attempt(replica, capability, payload, stream=stream, started=started)
                self.pool.succeeded(replica, time.monotonic() - started)
                kept = stream  # a stream holds its replica until the relay ends
                return outcome
            except TimeoutError:
                failure = _Failure("timeout", f"no answer within {limit:g} s")
            except _Retryable as exc:
                failure = exc.failure
            finally:
                if not kept:
                    replica.outstanding -= 1
            self.pool.failed(replica, failure.message)
            failures.append(failure)
            logger.warning(
                "upstream %s: replica %s failed: %s", self.spec.name, shown_url(replica.url), failure.message
            )
        raise self._give_up(failures)

    async def _attempt(
        self, replica: Replica, capability: str, payload: dict[str, Any], *, stream: bool, started: float
    ) -> Any:
        content = json.dumps({**payload, "model": replica.model}, ensure_ascii=False).encode()
        headers = {**replica.headers, "Content-Type": "application/json"}
        if (record := current_record()) is not None:
            headers["x-request-id"] = record.request_id  # one id across the front and the replica's logs
        url = replica.url + PATHS[capability]
        client = self.open()
        request = client.build_request("POST", url, content=content, headers=headers)
        try:
            response = await _send(client, request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retryable(_Failure("unreachable", f"cannot connect: {type(exc).__name__}: {exc}")) from exc
        except httpx.TimeoutException as exc:
            raise _Retryable(_Failure("timeout", f"{type(exc).__name__}")) from exc
        except httpx.HTTPError as exc:
            raise _Retryable(_Failure("bad", f"{type(exc).__name__}: {exc}")) from exc
        keep = False
        try:
            if response.status_code != 200:
                raw = await response.aread()
                if response.status_code < 500:
                    raise relayed_error(response.status_code, raw, response.headers.get("retry-after"))
                message = relayed_error(response.status_code, raw, None).message
                kind = "unreachable" if response.status_code == 503 else "bad"
                retry_after = response.headers.get("retry-after")
                raise _Retryable(_Failure(kind, f"HTTP {response.status_code}: {message}", retry_after))
            if not stream:
                raw = await response.aread()
                try:
                    answer = json.loads(raw)
                except ValueError as exc:
                    raise _Retryable(_Failure("bad", "the answer is not JSON")) from exc
                if not isinstance(answer, dict):
                    raise _Retryable(_Failure("bad", "the answer is not a JSON object"))
                return answer
            events = sse_data(response)
            first = await anext(events, None)
            if first is None:
                raise _Retryable(_Failure("bad", "the stream ended before its first event"))
            keep = True  # the relay reads on and closes it
            return _OpenStream(replica, response, events, first, started)
        except httpx.TimeoutException as exc:
            raise _Retryable(_Failure("timeout", f"{type(exc).__name__}")) from exc
        except httpx.HTTPError as exc:
            raise _Retryable(_Failure("bad", f"{type(exc).__name__}: {exc}")) from exc
        finally:
            if not keep:
                await response.aclose()

    def _give_up(self, failures: list[_Failure]) -> UpstreamFailure:
        name = self.spec.name
        error: UpstreamFailure
        if not failures:
            error = UpstreamUnavailableError(
                f"No replica of `{name}` is up (all down or ejected after failures).",
                retry_after=self.pool.retry_after(),
            )
        else:
            last = failures[-1]
            tried = f"{len(failures)} replica(s) of `{name}` tried; last: {last.message}"
            if last.kind == "timeout":
                error = UpstreamTimeoutError(f"The upstream did not answer in time ({tried}).")
            elif last.kind == "unreachable":
                retry = int(last.retry_after) if (last.retry_after or "").isdigit() else self.pool.retry_after()
                error = UpstreamUnavailableError(f"No replica could be reached ({tried}).", retry_after=retry)
            else:
                error = BadUpstreamError(f"The upstream gave a bad answer ({tried}).")
        error.fallback = self.spec.fallback
        return error

    # ---- relaying -----------------------------------------------------------------------------------
    async def _relay(self, opened: _OpenStream, model_id: str, wants_usage: bool) -> AsyncIterator[str]:
        replica, response = opened.replica, opened.response
        deadline = opened.started + self.spec.timeouts.total
        usage_seen, chunks = False, 0
        reading: asyncio.Future | None = None
        drain: AsyncIterator[str] | None = None
        try:
            data: str | None = opened.first
            while data is not None:
                if data.strip() == "[DONE]":
                    drain = opened.events  # read the body's end, so its connection goes back to the pool
                    break  # our SSE framing sends its own [DONE] (also where the upstream sent none)
                out, is_usage, has_output = self._rewrite(data, model_id)
                usage_seen = usage_seen or is_usage
                if has_output:  # not the role-only chunk a server sends before generating
                    chunks += 1
                    mark_first_token()
                if wants_usage or not is_usage:
                    yield out
                if time.monotonic() > deadline:
                    self.pool.failed(replica, "stream exceeded the total timeout")
                    raise UpstreamTimeoutError(f"The upstream stream ran past {self.spec.timeouts.total:g} s.")
                # Read in a task of its own: when the client leaves, the SSE layer cancels this generator again
                # and again while it unwinds; a read cancelled that way can leave the transport's close half done and
                # the upstream connection (and the replica's generation) running. Cancelled once, it closes.
                reading = asyncio.ensure_future(anext(opened.events, None))
                data = await asyncio.shield(reading)
        except httpx.HTTPError as exc:
            # mid-stream a "connect" error is a dropped connection (the aiohttp transport maps aiohttp's
            # ServerDisconnectedError to ConnectTimeout), not a stall
            if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
                self.pool.failed(replica, "stream stalled")
                raise UpstreamTimeoutError(f"The upstream stream stalled: {type(exc).__name__}.") from exc
            self.pool.failed(replica, f"stream broke: {type(exc).__name__}")
            raise BadUpstreamError(f"The upstream stream broke off: {type(exc).__name__}: {exc}") from exc
        finally:
            replica.outstanding -= 1
            # A client that left closes the upstream connection, so the replica aborts the sequence (in a task
            # of its own, for the same reason as the reads).
            if reading is not None and not reading.done():
                reading.cancel()
            close_in_background(response, reading, drain)
            if not usage_seen:  # servers without a usage chunk: one token per content chunk (vLLM/Gantry's pace)
                count_tokens(0, chunks)

    def _rewrite(self, data: str, model_id: str) -> tuple[str, bool, bool]:
        """(the chunk with our model id, whether it is the usage chunk, whether it carries generated output);
        usage is counted here."""
        try:
            chunk = json.loads(data)
        except ValueError:
            return data, False, False
        if not isinstance(chunk, dict):
            return data, False, False
        if (error := stream_error_event(chunk)) is not None:
            return json.dumps(error), False, False
        usage = chunk.get("usage")
        is_usage = isinstance(usage, dict) and not chunk.get("choices")
        if is_usage:
            count_tokens(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
        if "model" in chunk:
            chunk["model"] = model_id
        return json.dumps(chunk, ensure_ascii=False, separators=(",", ":")), is_usage, _has_output(chunk)


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data` of each server-sent event, as it arrives. Hand-written (a dozen lines) rather than
    httpx-sse: the relay needs nothing but the data field, and one dependency less."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


_closing: set[asyncio.Task] = set()  # referenced until done (the loop keeps only weak references)


DRAIN_SECONDS = 1.0  # after [DONE] a server ends its body at once; one that does not loses the connection


def close_in_background(
    response: httpx.Response, reading: asyncio.Future | None, drain: AsyncIterator[str] | None = None
) -> None:
    """Close the upstream response in a task of its own. `drain`: the events after a [DONE], read to the end
    first: closing a body that was not read to its end drops the connection, and the next request through
    this replica would pay a new TCP connect (measured: ~1 ms here, and the connects staggered bursts)."""

    async def close() -> None:
        if reading is not None:
            await asyncio.gather(reading, return_exceptions=True)
        if drain is not None:
            try:
                async with asyncio.timeout(DRAIN_SECONDS):
                    async for _ in drain:
                        pass
            except (TimeoutError, httpx.HTTPError):
                pass
        await response.aclose()

    task = asyncio.get_running_loop().create_task(close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _has_output(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") or {}
        if choice.get("text") or (isinstance(delta, dict) and any(v for k, v in delta.items() if k != "role")):
            return True
    return False


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


__all__ = ["Forwarder", "PATHS", "RelayedError", "sse_data"]
