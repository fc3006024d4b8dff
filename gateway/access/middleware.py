"""AccessMiddleware (pure ASGI): authenticates every request, sets its principal, applies the key's limits.

A pure middleware, not a router dependency, so every route is covered, including routes added later,
without each declaring anything. With no API key configured the server is open (principal None: every
model visible) and this middleware only names the admin key's requests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.access.keys import KeyStore
from gateway.access.limiter import Admission, RateLimiter
from gateway.access.principal import ANONYMOUS, Principal, acting_as
from gateway.errors import AuthenticationError, LimitStorageUnavailableError, RateLimitError
from gateway.middleware import send_error

logger = logging.getLogger(__name__)

DOCS_PATHS = frozenset({"/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
MISSING = "Missing API key: send `Authorization: Bearer <key>` (or an `api-key` / `x-api-key` header)."


def presented_key(headers: Headers) -> str | None:
    """The key from `Authorization: Bearer` (OpenAI), `api-key` (Azure) or `x-api-key` (Anthropic)."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for name in ("api-key", "x-api-key"):
        if value := headers.get(name, "").strip():
            return value
    return None


class AccessMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyStore,
        limiter: RateLimiter,
        has_public_model: Callable[[], bool],
        is_public_model: Callable[[str], bool],
        max_body_bytes: int = 4 << 20,
        docs_public: bool = False,
        metrics_require_key: bool = False,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.has_public_model = has_public_model
        self.is_public_model = is_public_model
        self.max_body_bytes = max_body_bytes
        self.open_paths = set() if not docs_public else set(DOCS_PATHS)
        if not metrics_require_key:
            self.open_paths.add("/metrics")

    def _exempt(self, scope: Scope, headers: Headers) -> bool:
        path = scope.get("path", "")
        if path == "/health" or path.startswith("/health/") or path in self.open_paths:
            return True
        # a CORS preflight carries no credentials by design
        return scope.get("method") == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = presented_key(headers)
        try:
            principal = self._principal(scope, headers, key)
        except AuthenticationError as exc:
            await send_error(send, exc, scope)
            return
        if principal is ANONYMOUS and not self._exempt(scope, headers):
            # a request without a key goes on only if its JSON body names a public model (the registry checks
            # again): a route that never looks a model up is never open to it
            receive = await self._public_model_body(scope, receive)
            if receive is None:
                await send_error(send, AuthenticationError(MISSING), scope)
                return
            # callers without a key share one budget: the default limits, counted under the name "anonymous"
            principal = Principal(name=None, limits=self.keys.default_limits)
        state = scope.setdefault("state", {})
        state["principal"] = principal
        if principal is not None and (record := state.get("record")) is not None:
            record.key_name = principal.name
        with acting_as(principal):
            if principal is None or principal.admin or not principal.limits.any():
                await self.app(scope, receive, send)
                return
            await self._limited(scope, receive, send, principal)

    def _principal(self, scope: Scope, headers: Headers, key: str | None) -> Principal | None:
        if not self.keys.enforced:  # open server: the admin key still names its requests (for /admin)
            if key is None:
                return None
            try:
                principal = self.keys.authenticate(key)
            except AuthenticationError:
                return None
            return principal if principal.admin else None
        if self._exempt(scope, headers):
            if key is None:
                return ANONYMOUS
            try:
                return self.keys.authenticate(key)
            except AuthenticationError:
                return ANONYMOUS  # /health answers whatever key a probe sends
        if key is not None:
            return self.keys.authenticate(key)
        # No key: only a request that names a model (a POST) may go on, and only while some model is public;
        # the registry then answers 401 for any model that is not public.
        if scope.get("method") == "POST" and self.has_public_model():
            return ANONYMOUS
        raise AuthenticationError(MISSING)

    async def _public_model_body(self, scope: Scope, receive: Receive) -> Receive | None:
        """Read the body (up to the body limit); a receive that replays it if it names a public model, else None.
        The Inference-API route names its model in the path (`/models/<id>`; its body may be raw audio)."""
        path = scope.get("path", "")
        if path.startswith("/models/"):
            return receive if self.is_public_model(path.removeprefix("/models/")) else None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            return None
        if not isinstance(model, str) or not self.is_public_model(model):
            return None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _limited(self, scope: Scope, receive: Receive, send: Send, principal: Principal) -> None:
        name, limits = principal.name or "anonymous", principal.limits
        try:
            admission: Admission = await self.limiter.admit(name, limits)
        except RateLimitError as exc:
            logger.info("rate limited: key %s (%s)", name, exc.message)
            await send_error(send, exc, scope)
            return
        except LimitStorageUnavailableError as exc:
            await send_error(send, exc, scope)
            return
        record = scope.get("state", {}).get("record")
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in admission.headers.items()]
        charged = False

        async def charge() -> None:
            nonlocal charged
            if not charged and record is not None:
                charged = True
                await self.limiter.charge(name, limits, record.prompt_tokens + record.completion_tokens)

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                await charge()  # before the last byte: the client's next request sees these tokens spent
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            try:
                await charge()  # a response cut short still used its tokens
            finally:
                if admission.release is not None:
                    try:
                        await admission.release()
                    except Exception:  # Redis gone: the slot's lease expires on its own
                        logger.exception("could not release a concurrency slot of key %s", name)
