"""Model registry: ids and aliases → entries of some kind, each with its own lifecycle.

Requests take a Lease (`await registry.acquire(id, capability)`): it loads the model lazily, answers 503
`model_loading` (or waits, with `x-wait-for-model`) while it loads, and keeps the model loaded until the
response's last byte. /admin adds, removes, loads and unloads entries; runtime additions and removals are
kept in a state file so they survive a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.access.principal import current_principal
from gateway.accounting import current_record
from gateway.errors import (
    AuthenticationError,
    ModelCapabilityError,
    ModelExistsError,
    ModelLoadingError,
    ModelNotFoundError,
    ModelNotReadyError,
)
from gateway.registry.entry import ModelEntry, ModelState, Origin
from gateway.registry.kinds import CHAT, ModelFactory, ModelKind, default_kinds
from gateway.registry.lease import Lease
from gateway.registry.lifecycle import Lifecycle, NoFreeSlot
from gateway.registry.store import RegistryState, RegistryStore
from gateway.specs import SpecBase

logger = logging.getLogger(__name__)

UNLOAD_DRAIN_SECONDS = 30.0  # how long an admin unload/remove lets running requests finish


class ModelRegistry:
    def __init__(
        self,
        specs: list[SpecBase],
        factory: ModelFactory,
        *,
        kinds: dict[str, ModelKind] | None = None,
        max_loaded_models: int | None = None,
        keep_alive: float = -1.0,
        wait_seconds: float = 300.0,
        store: RegistryStore | None = None,
    ) -> None:
        if not specs:
            raise ValueError("at least one model must be configured")
        self._keep_alive = keep_alive
        self._store = store
        self._state = store.read() if store is not None else RegistryState()
        self._entries: list[ModelEntry] = []
        self._by_id: dict[str, ModelEntry] = {}
        self.lifecycle = Lifecycle(
            kinds or default_kinds(factory), self.entries, max_loaded=max_loaded_models, wait_seconds=wait_seconds
        )
        removed = set(self._state.removed)
        for index, spec in enumerate(specs):
            if spec.name not in removed:
                self._register(spec, "file", default_preload=index == 0)
        for spec in self._state.added:
            try:
                self._register(spec, "runtime", default_preload=False)
            except ModelExistsError as exc:  # the models file now declares it: the file wins
                logger.error("state file %s: skipping %s: %s", store.path if store else "-", spec.name, exc.message)

    # ---- lookup -------------------------------------------------------------------------------------
    @property
    def default(self) -> ModelEntry:
        if not self._entries:
            raise ModelNotFoundError("No model is registered.", param="model")
        return self._entries[0]

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def find(self, model_id: str | None) -> ModelEntry:
        """The entry for an id, if the current caller may use it (gateway/access/principal.py): a model it
        may not use answers exactly like an unknown id, so its existence does not leak."""
        entry = self.default if model_id is None or model_id == "" else self._by_id.get(model_id)
        if entry is None or not self.visible(entry):
            if (principal := current_principal()) is not None and principal.anonymous:
                raise AuthenticationError(
                    "This model needs an API key: send `Authorization: Bearer <key>` (or an `api-key` header)."
                )
            # Echo only the client's own id (cut short), never the list of ids: GET /v1/models is the
            # place to see what this caller may use.
            model_id = model_id or "(default)"
            shown = model_id if len(model_id) <= 200 else model_id[:200] + "…"
            raise ModelNotFoundError(
                f"The model `{shown}` does not exist. GET /v1/models lists the available models.", param="model"
            )
        return entry

    def visible(self, entry: ModelEntry) -> bool:
        """Whether the current request's caller may use the entry (no caller: an open server, or no request)."""
        principal = current_principal()
        return principal is None or principal.may_use(entry.spec.ids(), entry.spec.visibility)

    def visible_entries(self) -> list[ModelEntry]:
        return [entry for entry in self._entries if self.visible(entry)]

    def has_public(self) -> bool:
        return any(entry.spec.visibility == "public" for entry in self._entries)

    def is_public(self, model_id: str) -> bool:
        entry = self._by_id.get(model_id)
        return entry is not None and entry.spec.visibility == "public"

    def capabilities(self, entry: ModelEntry) -> frozenset[str]:
        kind = self.lifecycle.kind(entry)
        narrowed = getattr(kind, "spec_capabilities", None)  # per entry, where the kind has it
        return narrowed(entry.spec) if narrowed is not None else kind.capabilities

    def describe(self, entry: ModelEntry) -> dict[str, Any]:
        """Lifecycle view of an entry (GET /v1/models/{id} details, /admin/models)."""
        kind = self.lifecycle.kind(entry)
        handle = entry.served
        status = entry.status(
            capabilities=self.capabilities(entry), context_length=kind.context_length(handle) if handle else None
        )
        if status["memory_bytes"] is None:
            status["memory_bytes"] = entry.size_bytes
        if entry.state in (ModelState.LOADING, ModelState.UNLOADING):
            status["estimated_time"] = round(self.lifecycle.estimated_time(entry), 1)
        return status

    def details(self, entry: ModelEntry) -> dict[str, Any]:
        """The kind's own description once loaded, plus the lifecycle view."""
        handle = entry.served
        own = self.lifecycle.kind(entry).describe(handle) if handle is not None else {}
        return {**own, **self.describe(entry)}

    def _check_capability(self, entry: ModelEntry, capability: str) -> None:
        can = self.capabilities(entry)
        if capability not in can:
            raise ModelCapabilityError(
                f"The model `{entry.name}` ({entry.kind}) cannot serve {capability} requests; "
                f"it supports: {', '.join(sorted(can)) or 'nothing'}.",
                param="model",
            )

    # ---- requests -----------------------------------------------------------------------------------
    def get(self, model_id: str | None, capability: str = CHAT) -> tuple[str, Any]:
        """The loaded handle for a request's `model` field and the id to echo back, without a lease.
        Not loaded → starts the load and raises 503 (use `acquire` to wait and to hold the model)."""
        entry = self.find(model_id)
        self._check_capability(entry, capability)
        if entry.state is not ModelState.READY or entry.served is None:
            raise self._not_ready(entry)
        return (model_id or entry.name), entry.served

    async def acquire(self, model_id: str | None, capability: str = CHAT, *, wait: bool = False) -> Lease:
        """A lease on a ready model (loading it if needed). `wait`: wait for the load (up to the
        wait_for_model setting) instead of answering 503 model_loading."""
        self.lifecycle.bind_loop()
        entry = self.find(model_id)
        if (record := current_record()) is not None:
            record.model, record.model_kind = model_id or entry.name, entry.kind
        self._check_capability(entry, capability)
        deadline = time.monotonic() + self.lifecycle.wait_seconds
        while True:
            if entry.removed:
                raise ModelNotFoundError(f"The model `{entry.name}` was removed.", param="model")
            if entry.state is ModelState.READY and entry.served is not None:
                entry.in_use += 1
                entry.last_used = time.time()
                self.lifecycle.cancel_idle(entry)
                return Lease(entry, model_id or entry.name, self._release)
            busy = self._not_ready(entry)  # starts a load of an unloaded entry
            task = entry.unload_task or entry.load_task
            remaining = deadline - time.monotonic()
            if not wait or not isinstance(busy, ModelLoadingError) or task is None or remaining <= 0:
                raise busy
            done, _ = await asyncio.wait({task}, timeout=remaining)  # never cancels the shared task
            if not done:
                raise self._not_ready(entry)
            # the load we waited for gave up for want of a slot; a later request starts a new one
            if isinstance(outcome := _result(task), NoFreeSlot):
                raise ModelNotReadyError(str(outcome), retry_after=10, code="model_capacity")

    def _release(self, entry: ModelEntry, generation: int) -> None:
        self.lifecycle.call_on_loop(self._released, entry, generation)

    def _released(self, entry: ModelEntry, generation: int) -> None:
        if generation != entry.loads:  # a lease on a load that a forced unload already ended: not counted
            return
        entry.in_use = max(0, entry.in_use - 1)
        entry.last_used = time.time()
        entry.idle_since = time.monotonic()
        if entry.in_use == 0 and entry.state is ModelState.READY:
            self.lifecycle.schedule_idle(entry)
        self.lifecycle.notify()

    def _not_ready(self, entry: ModelEntry) -> ModelNotReadyError:
        """The 503 for a request to an entry that is not ready; an unloaded entry starts loading."""
        if entry.state is ModelState.FAILED:
            return ModelNotReadyError(
                f"The model `{entry.name}` is unavailable. {entry.public_error()}", retry_after=60, permanent=True
            )
        if entry.state is ModelState.UNLOADED:
            # `get` may be called from a worker thread (prepare off the loop): the load starts on the loop
            self.lifecycle.call_on_loop(self.lifecycle.start_load, entry)
        verb = "unloading (it reloads on demand)" if entry.state is ModelState.UNLOADING else "currently loading"
        return ModelLoadingError(
            f"Model {entry.name} is {verb}; retry after Retry-After seconds or send `x-wait-for-model: true`.",
            estimated_time=self.lifecycle.estimated_time(entry),
        )

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def load_all(self) -> None:
        """Load the preload models, one after another (the others load on their first request)."""
        for entry in self.entries():
            if entry.preload and entry.state is ModelState.UNLOADED and not entry.removed:
                await self.lifecycle.start_load(entry)

    async def load(self, model_id: str) -> ModelEntry:
        """Load now (a failed entry is retried); raises 503 if the load fails."""
        entry = self.find(model_id)
        while entry.state is not ModelState.READY:
            if entry.state is ModelState.FAILED:
                entry.state = ModelState.UNLOADED
            if entry.state is ModelState.UNLOADING and entry.unload_task is not None:
                await asyncio.wait({entry.unload_task})
                continue
            task = self.lifecycle.start_load(entry)
            await asyncio.wait({task})
            if isinstance(_result(task), NoFreeSlot):
                raise ModelNotReadyError(str(_result(task)), retry_after=10, code="model_capacity")
            if entry.state is not ModelState.READY:
                raise self._not_ready(entry)
        return entry

    async def unload(self, model_id: str, *, drain: float = UNLOAD_DRAIN_SECONDS) -> ModelEntry:
        entry = self.find(model_id)
        await self.lifecycle.unload(entry, reason="requested", drain=drain)
        if entry.state is ModelState.FAILED:
            entry.state, entry.error = ModelState.UNLOADED, None
        return entry

    async def add(self, spec: SpecBase) -> ModelEntry:
        """Register a model at runtime (kept in the state file); it loads now if `preload`, else lazily."""
        entry = self._register(spec, "runtime", default_preload=False)
        self._state.added = [s for s in self._state.added if s.name != spec.name] + [spec]
        self._state.removed = [name for name in self._state.removed if name != spec.name]
        self._persist()
        logger.info("model %s: registered at runtime (kind %s)", spec.name, spec.kind)
        if entry.preload:
            self.lifecycle.start_load(entry)
        return entry

    async def remove(self, model_id: str, *, drain: float = UNLOAD_DRAIN_SECONDS) -> ModelEntry:
        """Unload and forget an entry (also across restarts)."""
        entry = self.find(model_id)
        entry.removed = True  # waiting requests now get 404; a load in progress is dropped when done
        await self.lifecycle.unload(entry, reason="removed", drain=drain)
        if entry.load_task is not None and not entry.load_task.done():
            await asyncio.wait({entry.load_task})
        self.lifecycle.cancel_idle(entry)
        self._entries.remove(entry)
        for alias in entry.spec.ids():
            self._by_id.pop(alias, None)
        if entry.origin == "runtime":
            self._state.added = [s for s in self._state.added if s.name != entry.name]
        else:
            self._state.removed.append(entry.name)
        self._persist()
        logger.info("model %s: removed", entry.name)
        return entry

    async def close(self) -> None:
        """Unload everything now (in-flight work is aborted by closing the engines); for shutdown."""
        for entry in self.entries():
            self.lifecycle.cancel_idle(entry)
            if entry.load_task is not None and not entry.load_task.done():
                entry.load_task.cancel()
        # all engines close together, and nothing is collected one model at a time: shutdown stays quick
        unloads = [self.lifecycle.unload(e, reason="shutdown", drain=0.0, free=False) for e in self.entries()]
        await asyncio.gather(*unloads, return_exceptions=True)

    # ---- internals ----------------------------------------------------------------------------------
    def _register(self, spec: SpecBase, origin: Origin, *, default_preload: bool) -> ModelEntry:
        if spec.kind not in self.lifecycle.kinds:
            raise ValueError(f"model {spec.name}: unknown kind {spec.kind!r}")
        taken = [model_id for model_id in spec.ids() if model_id in self._by_id]
        if taken:
            raise ModelExistsError(f"Model id(s) already registered: {', '.join(taken)}.", param="name")
        entry = ModelEntry(
            spec,
            origin=origin,
            preload=default_preload if spec.preload is None else spec.preload,
            keep_alive=self._keep_alive if spec.keep_alive is None else spec.keep_alive,
        )
        self._entries.append(entry)
        self._by_id.update(dict.fromkeys(spec.ids(), entry))
        return entry

    def _persist(self) -> None:
        if self._store is not None:
            self._store.write(self._state)


def _result(task: asyncio.Task) -> object:
    """A finished load/unload task's outcome; None if it was cancelled (shutdown) or raised."""
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()
