"""A lease: a request's hold on a loaded model, from before `prepare` to the last byte of its stream.

While any lease on a model is held the registry never unloads or evicts it. Routes take one with
`async with await registry.acquire(...)`; a streaming response `keep`s it, handing the release to the
stream's end (normal end, error, client disconnect, or the generator being dropped unstarted).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from gateway.registry.entry import ModelEntry

T = TypeVar("T")


class Lease:
    def __init__(self, entry: ModelEntry, model_id: str, on_release: Callable[[ModelEntry, int], None]) -> None:
        self.entry = entry
        self.generation = entry.loads  # which load of the model this lease holds (a forced unload ends it)
        self.model_id = model_id  # the id the client asked for (an alias stays an alias), echoed back
        self.served: Any = entry.served  # the kind's handle (ServedModel for `local`)
        self._on_release = on_release
        self._lock = threading.Lock()  # release may come from the GC's thread (weakref finalizer)
        self._released = False
        self._kept = False

    def release(self) -> None:
        """Idempotent: the first call gives the model back."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self.served = None
        self._on_release(self.entry, self.generation)

    @property
    def released(self) -> bool:
        return self._released

    def keep(self, chunks: AsyncIterator[T]) -> AsyncIterator[T]:
        """Hand the lease to a stream: released when the stream ends, however it ends."""
        self._kept = True
        stream = self._hold_during(chunks)
        weakref.finalize(stream, self.release)  # a stream dropped before its first step never runs `finally`
        return stream

    async def _hold_during(self, chunks: AsyncIterator[T]) -> AsyncIterator[T]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.release()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._kept:
            self.release()
