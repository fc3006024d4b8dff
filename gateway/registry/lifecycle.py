"""Loading, unloading, LRU eviction and idle unload of registry entries.

Everything here runs on the event loop except `kind.load`, which runs in a worker thread. State changes
happen between awaits, so a check ("idle? then unloading") and its transition cannot be interleaved with a
request taking a lease. One load task per entry: concurrent first requests await the same task.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import psutil

from gateway.progress import reporting_to
from gateway.registry.entry import LoadProgress, ModelEntry, ModelState
from gateway.registry.failure import load_failure_cause
from gateway.registry.kinds import ModelKind, free_memory, settle_after_load

logger = logging.getLogger(__name__)
T = TypeVar("T")

LOAD_GRACE_SECONDS = 10.0  # a freshly loaded model waits this long for the client whose request loaded it
DEFAULT_LOAD_SECONDS = 20.0  # estimate when nothing was measured yet (the Inference API's usual answer)
MiB = 1024 * 1024


class NoFreeSlot(Exception):
    """max_loaded_models are loaded and all of them are busy for longer than the wait."""


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


async def in_daemon_thread(work: Callable[[], T], *, name: str) -> T:
    """Run `work` in its own daemon thread (with this context, for progress reports). Not asyncio.to_thread:
    the default executor's threads are joined at exit, so a shutdown during a minutes-long load would hang."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]

    def run() -> None:
        try:
            outcome, error = context.run(work), None
        except BaseException as exc:  # handed to the awaiting task
            outcome, error = None, exc
        if not loop.is_closed():
            loop.call_soon_threadsafe(settle, outcome, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


class Lifecycle:
    def __init__(
        self,
        kinds: dict[str, ModelKind],
        entries: Callable[[], list[ModelEntry]],
        *,
        max_loaded: int | None,
        wait_seconds: float,
    ) -> None:
        self.kinds = kinds
        self._entries = entries
        self.max_loaded = max_loaded
        self.wait_seconds = wait_seconds
        self.load_rate: float | None = None  # bytes of weights per second, measured over the last load
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._changed: asyncio.Event | None = None
        self._background: set[asyncio.Task] = set()  # idle unloads: referenced until done

    # ---- plumbing -----------------------------------------------------------------------------------
    def bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._loop_thread, self._changed = loop, threading.get_ident(), asyncio.Event()
        return loop

    def on_loop_thread(self) -> bool:
        return self._loop is not None and threading.get_ident() == self._loop_thread

    def call_on_loop(self, callback: Callable[..., object], *args: object) -> None:
        """Run now if on the loop's thread, else hand over to it (a lease released by the GC)."""
        if self._loop is None or self.on_loop_thread():
            callback(*args)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)

    def notify(self) -> None:
        """Wake everything waiting for a change (a slot freed, a lease released, a load finished)."""
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def wait_changed(self, timeout: float) -> None:
        self.bind_loop()
        assert self._changed is not None
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def kind(self, entry: ModelEntry) -> ModelKind:
        return self.kinds[entry.spec.kind]

    # ---- loading ------------------------------------------------------------------------------------
    def start_load(self, entry: ModelEntry) -> asyncio.Task:
        """The entry's load task, started if none runs (the one place loads begin)."""
        self.bind_loop()
        if entry.load_task is None or entry.load_task.done():
            entry.state, entry.error, entry.error_ref, entry.progress = ModelState.LOADING, None, None, LoadProgress()
            entry.load_task = asyncio.create_task(self._load(entry), name=f"load-{entry.name}")
            self.notify()
        return entry.load_task

    async def _load(self, entry: ModelEntry) -> NoFreeSlot | None:
        """Returns the NoFreeSlot it gave up with, for the requests that waited on this load."""
        kind = self.kind(entry)
        try:
            await self._take_slot(entry)
        except NoFreeSlot as exc:
            entry.state, entry.error, entry.progress = ModelState.UNLOADED, str(exc), None
            self.notify()
            return exc
        assert entry.progress is not None
        progress = entry.progress

        def report(stage: str, fraction: float | None) -> None:  # called from the loading thread
            progress.stage, progress.fraction = stage, fraction
            logger.info("model %s loading: %s%s", entry.name, stage, f" {fraction:.0%}" if fraction else "")

        def build() -> object:
            entry.size_bytes = entry.size_bytes or kind.size_bytes(entry.spec)
            with reporting_to(report):
                report("starting", None)
                handle = kind.load(entry.spec)
            settle_after_load()  # once per load, in its thread (a collection holds the GIL: ~0.25 s with SmolLM2)
            return handle

        logger.info("model %s: loading (%s kind)", entry.name, entry.kind)
        before, started = rss_bytes(), time.monotonic()
        try:
            handle = await in_daemon_thread(build, name=f"load-{entry.name}")
        except asyncio.CancelledError:  # shutdown: the thread finishes on its own, nobody waits for it
            entry.state, entry.progress, entry.holds_slot = ModelState.UNLOADED, None, False
            raise
        except Exception as exc:  # a broken model is reported on its entry; the others keep serving
            entry.error_ref = uuid.uuid4().hex[:12]
            if isinstance(exc, FileNotFoundError):  # the message says it all; a traceback would be noise
                logger.error("model %s failed to load (error ref %s): %s", entry.name, entry.error_ref, exc)
            else:
                logger.exception("model %s failed to load (error ref %s)", entry.name, entry.error_ref)
            entry.loads += 1
            entry.state, entry.error, entry.progress = ModelState.FAILED, load_failure_cause(exc), None
            entry.holds_slot = False
            self.notify()
            return None
        seconds = time.monotonic() - started
        entry.loads += 1
        entry.load_seconds = seconds
        grown = rss_bytes() - before
        entry.memory_bytes = grown if grown > 0 else entry.size_bytes
        if entry.size_bytes and seconds > 0:
            self.load_rate = entry.size_bytes / seconds
        if entry.removed:  # deleted while it was loading
            await self._close_handle(entry, handle)
            entry.state, entry.holds_slot, entry.progress = ModelState.UNLOADED, False, None
            self.notify()
            return None
        if (start := getattr(kind, "start", None)) is not None:
            await start(handle)  # on the loop: what `load` (a worker thread) could not start
        entry.served, entry.state, entry.progress = handle, ModelState.READY, None
        entry.idle_since = time.monotonic()
        logger.info("model %s: ready in %.1f s (memory +%d MiB)", entry.name, seconds, (entry.memory_bytes or 0) // MiB)
        if entry.keep_alive >= 0:
            self.schedule_idle(entry, max(entry.keep_alive, LOAD_GRACE_SECONDS))
        self.notify()
        return None

    async def _take_slot(self, entry: ModelEntry) -> None:
        """Count the entry against max_loaded_models, evicting the least recently used idle model if full."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            holders = [e for e in self._entries() if e.holds_slot and e is not entry]
            if self.max_loaded is None or len(holders) < self.max_loaded:
                entry.holds_slot = True
                return
            idle = [e for e in holders if e.state is ModelState.READY and e.in_use == 0]
            if idle:
                victim = min(idle, key=lambda e: e.idle_since)
                logger.info("model %s: evicting idle %s (max_loaded_models=%d)", entry.name, victim.name, len(holders))
                await self.unload(victim, reason="evicted: least recently used")
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoFreeSlot(
                    f"All {self.max_loaded} model slots (max_loaded_models) are busy serving requests; "
                    f"none could be unloaded for `{entry.name}` within {self.wait_seconds:g} s."
                )
            if entry.progress is not None:
                entry.progress.stage = "waiting for a free slot (max_loaded_models)"
            await self.wait_changed(min(remaining, 1.0))

    # ---- unloading ----------------------------------------------------------------------------------
    async def unload(self, entry: ModelEntry, *, reason: str, drain: float = 0.0, free: bool = True) -> None:
        """Unload the entry (waiting for a load in progress first). In-flight requests get `drain` seconds
        to finish; whatever still runs after that is aborted by closing the engine. `free`: collect and return
        the memory to the OS (skipped at shutdown, where the process exit does it at once)."""
        self.bind_loop()
        while True:
            if entry.unload_task is not None:
                await asyncio.wait({entry.unload_task})  # waits without cancelling it or raising its errors
                return
            if entry.state is ModelState.LOADING and entry.load_task is not None:
                await asyncio.wait({entry.load_task})
                continue
            if entry.state is not ModelState.READY:
                return
            entry.state = ModelState.UNLOADING  # from here no new lease is handed out
            self.cancel_idle(entry)
            unloading = self._unload(entry, reason, drain, free)
            entry.unload_task = asyncio.create_task(unloading, name=f"unload-{entry.name}")
            self.notify()

    async def _unload(self, entry: ModelEntry, reason: str, drain: float, free: bool) -> None:
        try:
            deadline = time.monotonic() + drain
            while entry.in_use > 0 and (remaining := deadline - time.monotonic()) > 0:
                await self.wait_changed(min(remaining, 1.0))
            if entry.in_use:
                logger.warning("model %s: aborting %d in-flight request(s) to unload", entry.name, entry.in_use)
            before = rss_bytes()
            handle, entry.served = entry.served, None
            await self._close_handle(entry, handle)
            del handle
            if not free:
                logger.info("model %s: unloaded (%s)", entry.name, reason)
                return
            free_memory()  # after the last reference is gone, or the collector frees nothing
            logger.info(
                "model %s: unloaded (%s); RSS %d → %d MiB", entry.name, reason, before // MiB, rss_bytes() // MiB
            )
        finally:
            entry.state, entry.holds_slot, entry.unload_task = ModelState.UNLOADED, False, None
            entry.in_use = 0  # requests aborted by closing the engine no longer hold this model
            self.notify()

    async def _close_handle(self, entry: ModelEntry, handle: object) -> None:
        try:
            await self.kind(entry).unload(handle)
        except Exception:  # a failing close must not keep the entry half-unloaded
            logger.exception("model %s: error while unloading", entry.name)

    # ---- idle unload (keep_alive) -------------------------------------------------------------------
    def schedule_idle(self, entry: ModelEntry, delay: float | None = None) -> None:
        self.cancel_idle(entry)
        if entry.keep_alive < 0 or self._loop is None:
            return
        wait = entry.keep_alive if delay is None else delay
        entry.idle_timer = self._loop.call_later(wait, self._idle_check, entry)

    def cancel_idle(self, entry: ModelEntry) -> None:
        if entry.idle_timer is not None:
            entry.idle_timer.cancel()
            entry.idle_timer = None

    def _idle_check(self, entry: ModelEntry) -> None:
        entry.idle_timer = None
        if entry.state is not ModelState.READY or entry.in_use > 0 or entry.removed:
            return
        idle_for = time.monotonic() - entry.idle_since
        if idle_for + 0.01 < entry.keep_alive:  # used since the timer was set: wait out the rest
            self.schedule_idle(entry, entry.keep_alive - idle_for)
            return
        task = asyncio.ensure_future(self.unload(entry, reason=f"idle for {idle_for:.0f} s (keep_alive)"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- estimates ----------------------------------------------------------------------------------
    def estimated_time(self, entry: ModelEntry) -> float:
        """Seconds until the entry is likely ready: its last load's duration, else its size over the
        measured load rate, minus what the load in progress has already taken."""
        if entry.load_seconds is not None:
            total = entry.load_seconds
        elif entry.size_bytes and self.load_rate:
            total = entry.size_bytes / self.load_rate
        else:
            total = DEFAULT_LOAD_SECONDS
        if entry.state is ModelState.LOADING and entry.progress is not None:
            total -= time.monotonic() - entry.progress.started
        return max(1.0, total)
