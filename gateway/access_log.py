"""Logging for operators: one access line per request, a JSON line format, and prompt logging only on request.

- `AccessLog` is a request observer (app.state.request_observers): when a request's last byte is sent it logs
  request id, API key name (never the key), method, path, route, model, status, tokens, TTFT and duration, on
  the `gateway.access` logger. uvicorn's own access log is off (gateway/cli.py): it would log every request twice.
- `JsonFormatter` (`--log-format json`): one JSON object per line with the record's extra fields as keys.
- Prompts and outputs are never logged unless `log_prompts` (GANTRY_LOG_PROMPTS=true): then
  `PromptCaptureMiddleware` keeps the request body's prompt and the services keep each sequence's output
  (RequestRecord.capture_text), and a `gateway.prompts` line follows the access line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.accounting import RequestRecord
from gateway.logsafe import printable

ACCESS = logging.getLogger("gateway.access")
PROMPTS = logging.getLogger("gateway.prompts")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_CAPTURED_BODY = 256 << 10  # bytes of a request body kept to find its prompt
MAX_LOGGED_TEXT = 8000  # characters of a prompt or an output written to the log
PROMPT_FIELDS = ("messages", "prompt", "input")  # chat, completions, embeddings


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class AccessLog:
    """One `gateway.access` line per finished request (and a `gateway.prompts` line when prompts are logged)."""

    def __call__(self, record: RequestRecord) -> None:
        fields = {
            "request_id": record.request_id,
            "key_name": record.key_name,
            "method": record.method,
            "path": record.path,
            "route": record.route,
            "model": record.model,
            "status": record.status,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "ttft_seconds": _seconds(record.ttft_seconds),
            "duration_seconds": _seconds(record.duration_seconds),
            "aborted": record.aborted,
        }
        ttft = f"{record.ttft_seconds:.3f}s" if record.ttft_seconds is not None else "-"
        duration = f"{record.duration_seconds:.3f}s" if record.duration_seconds is not None else "-"
        # Client text (path, request id, model id) is escaped: it cannot forge a log line.
        ACCESS.info(
            "%s %s %s model=%s key=%s prompt_tokens=%d completion_tokens=%d ttft=%s duration=%s request_id=%s%s",
            record.method,
            printable(record.path),
            record.status if record.status is not None else "-",
            printable(record.model) if record.model is not None else "-",
            printable(record.key_name) if record.key_name is not None else "-",
            record.prompt_tokens,
            record.completion_tokens,
            ttft,
            duration,
            printable(record.request_id),
            " aborted" if record.aborted else "",
            extra=fields,
        )
        if record.capture_text:
            self._log_text(record)

    @staticmethod
    def _log_text(record: RequestRecord) -> None:
        outputs = [s.text for s in record.sequences if s.text is not None]
        if record.prompt_text is None and not outputs:
            return
        prompt = (record.prompt_text or "")[:MAX_LOGGED_TEXT]
        outputs = [text[:MAX_LOGGED_TEXT] for text in outputs]
        PROMPTS.info(
            "request_id=%s prompt=%s output=%s",
            printable(record.request_id),
            printable(prompt, MAX_LOGGED_TEXT),
            " | ".join(printable(text, MAX_LOGGED_TEXT) for text in outputs) or "-",
            extra={"request_id": record.request_id, "prompt": prompt, "outputs": outputs},
        )


def prompt_of(body: bytes) -> str | None:
    """The prompt part of a request body (chat messages, a completion prompt, embedding input) as text."""
    try:
        data = json.loads(body)
    except ValueError:  # cut at MAX_CAPTURED_BODY, or not JSON: what was sent, as text
        return body.decode("utf-8", errors="replace") or None
    if not isinstance(data, dict):
        return None
    for name in PROMPT_FIELDS:
        if name in data:
            value = data[name]
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return None


class PromptCaptureMiddleware:
    """Only installed with log_prompts: marks the request's record to keep text and keeps its body's prompt."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record: RequestRecord | None = scope.get("state", {}).get("record")
        if scope["type"] != "http" or record is None:
            await self.app(scope, receive, send)
            return
        record.capture_text = True
        chunks: list[bytes] = []
        size = 0

        async def capturing_receive() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if size < MAX_CAPTURED_BODY:
                    chunks.append(chunk[: MAX_CAPTURED_BODY - size])
                size += len(chunk)
                if not message.get("more_body", False) and size:
                    record.prompt_text = prompt_of(b"".join(chunks))
            return message

        await self.app(scope, capturing_receive, send)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extra fields, and any traceback.
    Non-ASCII and control characters are escaped by json.dumps, so a line never breaks."""

    STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
        "message",
        "asctime",
        "color_message",  # uvicorn's colored duplicate of the message
    }

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self.STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """The root handler on stderr, as text or JSON lines; uvicorn's loggers propagate to it (log_config=None)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
