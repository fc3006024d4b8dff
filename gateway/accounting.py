"""What one request did, gathered as it runs: who asked, which model, tokens, first-token time, status.

The request-context middleware opens a RequestRecord for every HTTP request and keeps it in a contextvar
(the streaming task copies the context, so a stream's chunks fill the same record). The registry names
the model, services add tokens and the first-token time; when the response's last byte is sent the
middleware runs the record's finish callbacks: metrics, access logs and token-rate limits read the
record there instead of each wrapping every route.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class SequenceStats:
    """How one generated sequence went (services/sequences.py fills it; metrics read it at the end)."""

    queue_seconds: float | None = None  # engine admission → first scheduled (None: the engine does not say)
    token_gaps: list[float] = field(default_factory=list)  # seconds between consecutive output tokens
    tokens: int = 0
    finish: str = "abort"  # stop / length / abort (the client left or the engine was stopped) / error
    text: str | None = None  # the output text, only when prompt logging is on (`RequestRecord.capture_text`)


@dataclass
class RequestRecord:
    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.monotonic)
    key_name: str | None = None  # the API key's name (never the key), once authenticated
    model: str | None = None  # the id the client asked for, once the registry found it
    model_kind: str | None = None
    route: str | None = None  # the route's path template (e.g. /v1/chat/completions), once routed
    status: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None  # monotonic time of the first generated token sent
    finished_at: float | None = None
    aborted: bool = False  # the client went away before the response ended
    sequences: list[SequenceStats] = field(default_factory=list)  # one per generated sequence
    capture_text: bool = False  # log_prompts: keep the prompt and output text for the log
    prompt_text: str | None = None  # the request's prompt (only with capture_text)
    on_finish: list[Callable[[RequestRecord], None]] = field(default_factory=list, repr=False)

    def add_tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    @property
    def ttft_seconds(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def duration_seconds(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started

    def finish(self, status: int | None) -> None:
        """Runs once, when the response ended (or failed); a failing callback never hurts the others."""
        if self.finished_at is not None:
            return
        self.finished_at = time.monotonic()
        if status is not None:
            self.status = status
        for callback in self.on_finish:
            try:
                callback(self)
            except Exception:
                logger.exception("request finish callback %r failed", callback)


_current: ContextVar[RequestRecord | None] = ContextVar("gantry_request_record", default=None)


def current_record() -> RequestRecord | None:
    """The record of the request this code runs for, or None outside a request (tests, startup)."""
    return _current.get()


def open_record(record: RequestRecord) -> object:
    return _current.set(record)


def close_record(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def count_tokens(prompt: int, completion: int) -> None:
    """Add a response's tokens to the current request's record (no-op outside a request)."""
    if (record := current_record()) is not None:
        record.add_tokens(prompt, completion)


def add_sequence(stats: SequenceStats) -> None:
    if (record := current_record()) is not None:
        record.sequences.append(stats)


def capturing_text() -> bool:
    """Whether this request's prompt and output text may be kept for the log (GANTRY_LOG_PROMPTS)."""
    record = current_record()
    return record is not None and record.capture_text


def mark_first_token() -> None:
    if (record := current_record()) is not None:
        record.first_token()
