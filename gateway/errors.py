"""Typed errors and their mapping to the OpenAI error envelope.

    GatewayError                        500 server_error
    ├── InvalidRequestError             400 invalid_request_error
    │   ├── ContextLengthExceededError  400 code=context_length_exceeded
    │   ├── LimitExceededError          400 code=limit_exceeded (a configured bound; retrying cannot help)
    │   ├── UnsupportedParameterError   400 code=unsupported_parameter
    │   └── ModelCapabilityError        400 code=model_capability (the model cannot do what the route asks)
    ├── AuthenticationError             401 code=invalid_api_key (missing, unknown or expired key)
    ├── ModelNotFoundError              404 code=model_not_found
    ├── ModelExistsError                409 code=model_exists (POST /admin/models with a taken id)
    ├── PayloadTooLargeError            413 code=request_too_large (body over max_body_bytes)
    ├── UnsupportedMediaTypeError       415 code=unsupported_media_type (body not sent as JSON)
    ├── ModelNotReadyError              503 (failed, or no slot), Retry-After
    │   └── ModelLoadingError           503 code=model_loading, Retry-After + error.estimated_time
    ├── OverloadedError                 429 code=overloaded (too many running + queued), Retry-After
    ├── ShuttingDownError               503 code=server_shutting_down, Retry-After (see gateway/shutdown.py)
    ├── RateLimitError                  429 code=rate_limit_exceeded (an API key's rpm/tpm/concurrency), Retry-After
    ├── RequestTimeoutError             504 code=request_timeout (past request_timeout_seconds)
    └── EngineError                     500 the engine failed while generating

Envelope: {"error": {"message", "type", "param", "code"}}. Errors are mapped by type, never by text.
Paths listed in `app.state.detail_error_paths` (the tutorials' routes, gateway/routes/compat.py) answer the
same errors in FastAPI's own shape instead, `{"detail": message}`, which their clients expect.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters import AdapterError

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def headers(self) -> dict[str, str]:
        return {}

    def log_level(self) -> int | None:
        """How the error handler logs this error: server faults at ERROR, client errors not at all."""
        return logging.ERROR if self.status_code >= 500 else None

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class UnsupportedParameterError(InvalidRequestError):
    default_code = "unsupported_parameter"


class LimitExceededError(InvalidRequestError):
    """A request beyond a configured bound (prompt size, schema size, n beyond capacity, ...)."""

    default_code = "limit_exceeded"


class PayloadTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class ModelCapabilityError(InvalidRequestError):
    default_code = "model_capability"


class ModelNotFoundError(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ModelExistsError(GatewayError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "model_exists"


class ModelNotReadyError(GatewayError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "model_not_ready"

    def __init__(self, message: str, *, retry_after: int = 5, permanent: bool = False, code: str | None = None) -> None:
        super().__init__(message, param="model", code=code)
        self.retry_after = retry_after
        self.permanent = permanent

    def headers(self) -> dict[str, str]:
        headers = {"Retry-After": str(self.retry_after)}
        if self.permanent:  # a failed load will not heal by retrying: stop the SDK's automatic retries
            headers["x-should-retry"] = "false"
        return headers

    def log_level(self) -> int:
        # A request during a load is expected traffic (the access log shows its 503); the failed load itself
        # was logged at ERROR when it happened.
        return logging.WARNING if self.permanent else logging.DEBUG


class ModelLoadingError(ModelNotReadyError):
    """The model is loading (or unloading before a reload): the hosted Inference API's
    `{"error": "Model X is currently loading", "estimated_time": 20.0}`, in the OpenAI envelope."""

    default_code = "model_loading"

    def __init__(self, message: str, *, estimated_time: float) -> None:
        super().__init__(message, retry_after=max(1, min(60, round(estimated_time))))
        self.estimated_time = estimated_time

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["estimated_time"] = round(self.estimated_time, 1)
        return body


class OverloadedError(GatewayError):
    """The model's running and queued places are all taken; the client should retry later."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class LimitStorageUnavailableError(GatewayError):
    """The shared rate-limit storage (Redis) cannot be reached: requests are refused (fail closed) as a 503,
    so a client retries instead of reading it as its own fault."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "rate_limit_storage_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class ShuttingDownError(GatewayError):
    """The server is shutting down: new requests are refused, and requests past the grace period end with this."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "server_shutting_down"

    def __init__(self, message: str = "The server is shutting down; retry on another instance or shortly.") -> None:
        super().__init__(message)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}

    def log_level(self) -> int:
        return logging.INFO  # the expected end of a request at shutdown, not a fault


class EngineError(GatewayError):
    """Generation failed inside the engine; retrying the same request would fail the same way."""

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "false"}


class RateLimitError(GatewayError):
    """The API key used up one of its limits (rpm, tpm, concurrent requests): see gateway/access/limiter.py."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, rate_headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_headers = rate_headers or {}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after), **self.rate_headers}


class RequestTimeoutError(GatewayError):
    """The request ran past request_timeout_seconds; its generation was stopped."""

    status_code = 504
    error_type = "timeout_error"
    default_code = "request_timeout"

    def log_level(self) -> int:
        return logging.WARNING


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def from_adapter_error(exc: AdapterError) -> InvalidRequestError:
    return InvalidRequestError(str(exc), param=exc.param)


# The Hugging Face Inference-API route (POST /models/{id}) answers errors in that API's own shape,
# `{"error": "…"}` (+ `estimated_time` while loading), which its clients (huggingface_hub) parse.
INFERENCE_API_PREFIX = "/models/"


def is_inference_api_path(path: str) -> bool:
    return path.startswith(INFERENCE_API_PREFIX)


def inference_api_body(exc: GatewayError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": exc.message}
    if isinstance(exc, ModelLoadingError):
        body["estimated_time"] = round(exc.estimated_time, 1)
    return body


def wants_detail(scope: Any) -> bool:
    """Whether this request's path answers errors as `{"detail": …}` (the tutorials' routes)."""
    state = getattr(scope.get("app"), "state", None)
    return scope.get("path") in getattr(state, "detail_error_paths", ())


def shaped_body(scope: Any, exc: GatewayError) -> dict[str, Any]:
    """The error in the shape the request's route documents: the Inference API's `{"error"}` on
    /models/{id}, FastAPI's `{"detail"}` on the tutorials' routes, else the OpenAI envelope."""
    if scope is None:
        return exc.to_dict()
    if is_inference_api_path(scope.get("path", "")):
        return inference_api_body(exc)
    return {"detail": exc.message} if wants_detail(scope) else exc.to_dict()


def error_response(exc: GatewayError, scope: Any = None) -> JSONResponse:
    return JSONResponse(shaped_body(scope, exc), status_code=exc.status_code, headers=exc.headers())


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return f"Request body is not valid JSON: {first.get('msg')}", None
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    extra = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return (f"Invalid value for '{param}': {msg}{extra}" if param else f"{msg}{extra}"), param


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the app can raise to the OpenAI envelope (validation → 400, not 422)."""

    @app.exception_handler(GatewayError)
    async def _gateway(request: Request, exc: GatewayError) -> JSONResponse:
        level = exc.log_level()
        if level is not None:
            logger.log(level, "request failed: %s", exc.message)
        return error_response(exc, request.scope)

    @app.exception_handler(AdapterError)
    async def _adapter(request: Request, exc: AdapterError) -> JSONResponse:
        return error_response(from_adapter_error(exc), request.scope)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(InvalidRequestError(message, param=param), request.scope)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if wants_detail(request.scope):
            return JSONResponse(
                {"detail": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
            )
        error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        inference_api = is_inference_api_path(request.url.path)
        return JSONResponse(
            {"error": str(exc.detail)} if inference_api else error_body(str(exc.detail), error_type, None, None),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
