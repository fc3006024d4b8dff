"""A registry entry and its lifecycle: unloaded → loading → ready → unloading → unloaded, or failed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from gateway.specs import SpecBase


class ModelState(str, Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


Origin = Literal["file", "runtime"]


@dataclass
class LoadProgress:
    stage: str = "queued"
    fraction: float | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class ModelEntry:
    spec: SpecBase
    state: ModelState = ModelState.UNLOADED
    served: Any = None  # the kind's handle: a ServedModel for `local`
    error: str | None = None  # the load failure's short cause, paths cut to their last part (load_failure_cause)
    error_ref: str | None = None  # names the failure's full log line (paths, traceback) for the operator
    created: int = field(default_factory=lambda: int(time.time()))
    origin: Origin = "file"
    preload: bool = False
    keep_alive: float = -1.0  # seconds; -1 never unload when idle
    in_use: int = 0  # leases held by requests (streams included): never unloaded while > 0
    last_used: float | None = None  # wall clock, for people
    idle_since: float = field(default_factory=time.monotonic)  # monotonic, for LRU and keep_alive
    loads: int = 0  # completed load attempts (a counter the tests and operators can read)
    load_seconds: float | None = None  # duration of the last successful load
    memory_bytes: int | None = None  # RSS growth measured over the last load (else the weights' size)
    progress: LoadProgress | None = None
    size_bytes: int | None = None  # weights on disk, measured at the first load
    removed: bool = False  # taken out of the registry (DELETE /admin/models/{id}); waiters get 404
    holds_slot: bool = False  # counts against max_loaded_models (loading, ready or unloading)
    load_task: asyncio.Task | None = field(default=None, repr=False)
    unload_task: asyncio.Task | None = field(default=None, repr=False)
    idle_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def public_error(self) -> str | None:
        if self.error is None:
            return None
        if self.error_ref is None:  # not a load failure (e.g. no free slot): nothing in the log to point at
            return self.error
        return f"The model failed to load: {self.error} (error ref {self.error_ref}; the server log has the details)."

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def status(self, *, capabilities: frozenset[str], context_length: int | None) -> dict[str, Any]:
        """What GET /v1/models/{id} and /admin/models show about the entry's lifecycle."""
        progress = None
        if self.progress is not None and self.state is ModelState.LOADING:
            progress = {
                "stage": self.progress.stage,
                "fraction": self.progress.fraction,
                "elapsed_seconds": round(time.monotonic() - self.progress.started, 1),
            }
        return {
            "state": self.state.value,
            "kind": self.kind,
            "capabilities": sorted(capabilities),
            "origin": self.origin,
            "preload": self.preload,
            "keep_alive": self.keep_alive,
            "in_use": self.in_use,
            "loads": self.loads,
            "load_seconds": round(self.load_seconds, 2) if self.load_seconds is not None else None,
            "last_used": int(self.last_used) if self.last_used is not None else None,
            "memory_bytes": self.memory_bytes,
            "progress": progress,
            "context_length": context_length,
            "error": self.public_error(),
        }
