"""Upstream failures in our contract: every error a client sees is the OpenAI envelope with our statuses.

Upstreams differ: vLLM and Gantry answer the envelope, FastAPI-based servers (`transformers serve`, TGI's
router) `{"detail": ...}` with 422 for validation, others a bare string. A 4xx is the client's fault and is
relayed (422 → 400); a 5xx, a timeout or a refused connection is the upstream's and may be retried elsewhere.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gateway.errors import GatewayError, ModelNotReadyError

MAX_MESSAGE_CHARS = 2000


class RelayedError(GatewayError):
    """A 4xx answer of the upstream (the request's fault), in the envelope with the upstream's status."""

    def __init__(self, status: int, error: dict[str, Any], retry_after: str | None = None) -> None:
        super().__init__(str(error.get("message") or "The upstream refused the request."))
        self.status_code = 400 if status == 422 else status
        self.error_type = str(error.get("type") or "invalid_request_error")
        self.param = error.get("param") if isinstance(error.get("param"), str) else None
        code = error.get("code")
        self.code = code if isinstance(code, str) else None
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after} if self.retry_after else {}


class UpstreamFailure(GatewayError):
    """No replica gave a usable answer; `fallback` names the model to try instead (the entry's own)."""

    fallback: str | None = None


class BadUpstreamError(UpstreamFailure):
    status_code = 502
    error_type = "upstream_error"
    default_code = "bad_upstream_response"


class UpstreamTimeoutError(UpstreamFailure):
    status_code = 504
    error_type = "upstream_error"
    default_code = "upstream_timeout"


class UpstreamUnavailableError(UpstreamFailure, ModelNotReadyError):
    """503 + Retry-After: no replica is reachable (all down, ejected or refusing connections)."""

    default_code = "upstream_unavailable"

    def __init__(self, message: str, *, retry_after: int) -> None:
        ModelNotReadyError.__init__(self, message, retry_after=retry_after)

    def log_level(self) -> int:
        return logging.WARNING


def error_fields(status: int, body: bytes) -> dict[str, Any]:
    """{"message", "type", "param", "code"} from whatever error body the upstream sent."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = text
    return _fields(data) or {"message": (text or f"The upstream answered HTTP {status}.")[:MAX_MESSAGE_CHARS]}


def _fields(data: Any) -> dict[str, Any] | None:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):  # the envelope already
        error = dict(data["error"])
        error["message"] = _text(error.get("message")) or "The upstream refused the request."
        return error
    if isinstance(data, dict) and isinstance(data.get("error"), str):  # {"error": "..."} (TGI, llama.cpp)
        return {"message": _text(data["error"]), "type": data.get("error_type")}
    if isinstance(data, dict) and "detail" in data:  # FastAPI: a string, or a list of validation errors
        return {"message": _text(data["detail"])}
    if isinstance(data, str) and data:
        return {"message": data[:MAX_MESSAGE_CHARS]}
    return None


def _text(value: Any) -> str:
    if isinstance(value, list):  # FastAPI validation errors: "body.max_tokens: Input should be ..."
        parts = []
        for item in value:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        value = "; ".join(parts)
    return str(value if value is not None else "")[:MAX_MESSAGE_CHARS]


def relayed_error(status: int, body: bytes, retry_after: str | None) -> RelayedError:
    return RelayedError(status, error_fields(status, body), retry_after)


def stream_error_event(data: dict[str, Any]) -> dict[str, Any] | None:
    """An error sent inside a stream (`data: {"error": ...}` or `{"detail": ...}`) as the envelope."""
    if "choices" in data or not ({"error", "detail"} & data.keys()):
        return None
    fields = _fields(data) or {"message": "The upstream failed while streaming."}
    return {
        "error": {
            "message": fields.get("message"),
            "type": fields.get("type") or "upstream_error",
            "param": fields.get("param"),
            "code": fields.get("code"),
        }
    }
