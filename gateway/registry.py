"""Model registry: ids and aliases → served models, with per-model load state.

Models load in the background after startup so /health answers at once and /health/ready (and
requests) get 503 until the model is ready. Lazy load and idle unload slot in here later.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from gateway.errors import ModelNotFoundError, ModelNotReadyError
from gateway.models import ServedModel
from gateway.settings import ModelSpec
from gateway.shutdown import to_daemon_thread

logger = logging.getLogger(__name__)

ModelFactory = Callable[[ModelSpec], ServedModel]


class ModelState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ModelEntry:
    spec: ModelSpec
    state: ModelState = ModelState.LOADING
    served: ServedModel | None = None
    error: str | None = None  # the load failure's short cause, paths cut to their last part (load_failure_cause)
    error_ref: str | None = None  # names the failure's full log line (paths, traceback) for the operator
    created: int = field(default_factory=lambda: int(time.time()))

    def public_error(self) -> str | None:
        if self.error is None:
            return None
        return f"The model failed to load: {self.error} (error ref {self.error_ref}; the server log has the details)."


# An absolute POSIX or Windows path inside an exception message (up to whitespace or a quote).
_PATH = re.compile(r"""(?<![\w.])(?:[A-Za-z]:[\\/]|/|~/)[^\s'"`,;)]+""")
_MAX_CAUSE = 300


def load_failure_cause(exc: BaseException) -> str:
    """The short, client-safe cause of a failed load, shown by /health/ready, /v1/models and the 503s: the
    exception type and first line of its message, filesystem paths reduced to their last part (the full
    error, with paths and traceback, is in the server log)."""
    if isinstance(exc, FileNotFoundError):
        name = Path(exc.filename).name if isinstance(exc.filename, str) and exc.filename else None
        return f"the model file or directory was not found ({name})" if name else "a model file was not found"
    lines = str(exc).strip().splitlines()
    message = _PATH.sub(_last_part, lines[0] if lines else "")
    cause = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return cause if len(cause) <= _MAX_CAUSE else cause[: _MAX_CAUSE - 1] + "…"


def _last_part(match: re.Match[str]) -> str:
    path = match.group(0)
    body = path.rstrip(".:")  # sentence punctuation after the path stays
    name = re.split(r"[\\/]", body.rstrip("\\/"))[-1]
    return (name or "<path>") + path[len(body) :]


class ModelRegistry:
    def __init__(self, specs: list[ModelSpec], factory: ModelFactory) -> None:
        if not specs:
            raise ValueError("at least one model must be configured")
        self._factory = factory
        self._entries = [ModelEntry(spec) for spec in specs]
        self._by_id = {model_id: entry for entry in self._entries for model_id in entry.spec.ids()}

    @property
    def default(self) -> ModelEntry:
        return self._entries[0]

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    async def load_all(self) -> None:
        """Load every configured model, one after another, off the event loop."""
        for entry in self._entries:
            try:
                entry.served = await to_daemon_thread(self._factory, entry.spec)
                entry.state = ModelState.READY
            except Exception as exc:  # a broken model must not take the server down
                entry.error_ref = uuid.uuid4().hex[:12]
                if isinstance(exc, FileNotFoundError):  # the message says it all; a traceback would be noise
                    logger.error("model %s failed to load (error ref %s): %s", entry.spec.name, entry.error_ref, exc)
                else:
                    logger.exception("model %s failed to load (error ref %s)", entry.spec.name, entry.error_ref)
                entry.state, entry.error = ModelState.FAILED, load_failure_cause(exc)

    def find(self, model_id: str | None) -> ModelEntry:
        if model_id is None or model_id == "":
            return self.default
        entry = self._by_id.get(model_id)
        if entry is None:
            # Echo only the client's own id (cut short), never the list of ids: GET /v1/models is the
            # place to see what this caller may use.
            shown = model_id if len(model_id) <= 200 else model_id[:200] + "…"
            raise ModelNotFoundError(
                f"The model `{shown}` does not exist. GET /v1/models lists the available models.", param="model"
            )
        return entry

    def get(self, model_id: str | None) -> tuple[str, ServedModel]:
        """The served model for a request's `model` field, and the id to echo back."""
        entry = self.find(model_id)
        if entry.state is ModelState.LOADING:
            raise ModelNotReadyError(f"The model `{entry.spec.name}` is still loading; retry shortly.")
        if entry.state is ModelState.FAILED or entry.served is None:
            raise ModelNotReadyError(
                f"The model `{entry.spec.name}` is unavailable. {entry.public_error()}",
                retry_after=60,
                permanent=True,
            )
        return (model_id or entry.spec.name), entry.served

    async def close(self) -> None:
        for entry in self._entries:
            if entry.served is not None:
                if entry.served.grammar is not None:
                    entry.served.grammar.close()  # also stops a compile in progress
                await entry.served.engine.close()
