"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks streaming and disconnect detection).

Outermost first: RequestContextMiddleware (request id, last-resort 500) → CORS (when configured) →
JSONContentTypeMiddleware (415) → BodySizeLimitMiddleware (413) → the app.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.accounting import RequestRecord, close_record, open_record
from gateway.errors import GatewayError, PayloadTooLargeError, UnsupportedMediaTypeError, error_body, shaped_body
from gateway.logsafe import printable

logger = logging.getLogger(__name__)

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def send_error(send: Send, exc: GatewayError, scope: Scope | None = None) -> None:
    """Answer with an error straight from a middleware (the app never sees the request): with the scope, in
    the shape its route documents (gateway/errors.py shaped_body), else the OpenAI envelope."""
    body = json.dumps(shaped_body(scope, exc)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers().items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class BodyRule:
    """Requests under `path_prefix` whose Content-Type is one of `media_types` (`audio/*` matches any audio
    type) may send that type instead of JSON, up to `max_bytes` instead of max_body_bytes (audio uploads)."""

    path_prefix: str
    media_types: tuple[str, ...]
    max_bytes: int

    def matches(self, scope: Scope, headers: Headers) -> bool:
        if not str(scope.get("path", "")).startswith(self.path_prefix):
            return False
        return media_matches(headers.get("content-type"), self.media_types)


def media_matches(content_type: str | None, patterns: Sequence[str]) -> bool:
    """Whether a Content-Type is one of `patterns` (`audio/*` matches every audio type)."""
    media = _media_type(content_type)
    return bool(media) and any(media == p or (p.endswith("/*") and media.startswith(p[:-1])) for p in patterns)


def matching_rule(rules: Sequence[BodyRule], scope: Scope, headers: Headers) -> BodyRule | None:
    return next((rule for rule in rules if rule.matches(scope, headers)), None)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class RequestContextMiddleware:
    """Adds x-request-id to every response (echoing the client's), opens the request's RequestRecord
    (gateway/accounting.py) and hands it to the observers when the response ends, and turns any escaped
    exception into a 500 with the OpenAI envelope instead of a bare text error."""

    def __init__(self, app: ASGIApp, observers: list[Callable[[RequestRecord], None]] | None = None) -> None:
        self.app = app
        self.observers = observers if observers is not None else []  # called with each finished record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        record = RequestRecord(request_id=request_id, method=scope.get("method", ""), path=scope.get("path", ""))
        record.on_finish.extend(self.observers)
        scope["state"]["record"] = record
        token = open_record(record)
        started = False
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                record.route = route_template(scope)
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record.finish(status)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # The path is percent-decoded client text: escaped, so it cannot start a forged log line.
            logger.exception(
                "unhandled error on %s %s (request id %s)",
                scope.get("method"),
                printable(scope.get("path")),
                printable(request_id),
            )
            if started:
                raise
            # No exception text to the client: the log has it, the request id finds it there.
            error = GatewayError(f"Internal server error (request id {request_id}).")
            await send_error(send_with_id, error, scope)
        finally:
            if record.finished_at is None:  # the last byte was never sent: the client went away, or an error
                record.route = record.route or route_template(scope)
                record.aborted = True
                record.finish(status)
            close_record(token)


def route_template(scope: Scope) -> str | None:
    """The path template of the route serving the request (e.g. /v1/models/{model_id}), so metrics get one
    label per route, not per path; a request refused by a middleware before routing is matched here;
    None when no route serves the path."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
    return getattr(route, "path_format", None) or getattr(route, "path", None)


class JSONContentTypeMiddleware:
    """A request body must be declared as JSON (`application/json` or `application/*+json`) → else 415.

    The type is checked, not guessed: a browser page may send a cross-origin "simple" request (no CORS
    preflight) with `text/plain`, form types, or no Content-Type at all (a fetch() of an ArrayBuffer or
    an untyped Blob), but never with `application/json` without the page's origin passing a preflight.
    So a missing Content-Type is refused too, unlike FastAPI (and vLLM), which parse an untyped body as
    JSON; every real client (openai SDK, LangChain, httpx/requests `json=`) sends the header.
    """

    def __init__(self, app: ASGIApp, rules: Sequence[BodyRule] = ()) -> None:
        self.app = app
        self.rules = tuple(rules)  # the routes that take another body type (multipart or raw audio)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") in BODY_METHODS:
            headers = Headers(scope=scope)
            declared = headers.get("content-type")
            if _has_body(headers) and not _is_json(declared) and not matching_rule(self.rules, scope, headers):
                got = f"got {declared[:100]!r}" if declared else "none was sent"
                await send_error(
                    send,
                    UnsupportedMediaTypeError(
                        f"Request bodies must be JSON with 'Content-Type: application/json' ({got})."
                    ),
                    scope,
                )
                return
        await self.app(scope, receive, send)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = _media_type(content_type)
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


class BodySizeLimitMiddleware:
    """413 for a body over `max_bytes`, decided before the body is read: from Content-Length when it is
    declared; a chunked body (no length) is read up to the limit, then refused or replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, rules: Sequence[BodyRule] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.rules = tuple(rules)  # per-route limits (audio uploads) replacing max_bytes

    @staticmethod
    def _too_large(limit: int, declared: int | None = None) -> PayloadTooLargeError:
        size = f" of {declared} bytes" if declared is not None else ""
        return PayloadTooLargeError(f"Request body{size} exceeds the limit of {limit} bytes.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rule = matching_rule(self.rules, scope, headers)
        limit = rule.max_bytes if rule is not None else self.max_bytes
        length = headers.get("content-length")
        if length is not None:
            if length.isdigit() and int(length) > limit:
                await send_error(send, self._too_large(limit, int(length)), scope)
                return
            await self.app(scope, receive, send)  # the server holds the body to its declared length
            return
        if "transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left while sending
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, self._too_large(limit), scope)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later messages (http.disconnect) come from the server

        await self.app(scope, replay, send)


class EnvelopeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling, with a refused preflight answered in the OpenAI envelope (not text)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")}
        message = f"{bytes(response.body).decode()} (allowed origins are set with GANTRY_CORS_ORIGINS)."
        return JSONResponse(
            error_body(message, "invalid_request_error", None, "cors_disallowed"),
            status_code=response.status_code,
            headers=headers,
        )
