"""Keep Python's full garbage collections off the serving path.

A process serving a model holds ~470k tracked objects once transformers, torch and the model are in (the
front gateway with no model ~265k). A full (oldest-generation) collection walks all of them: 220-250 ms
on a Sapphire Rapids core with SmolLM2 loaded, 115 ms in a front. It holds the GIL the whole time, so the
event loop stops relaying chunks and the engine's decode loop stops between two ops. CPython starts one
once the objects promoted since the last one reach a quarter of the oldest generation: rare (none in 960
short chat requests here), so it shows as a quarter-second stall every so often on a long-running server.

What startup and a model load leave behind lives as long as the process (or the model), so it is moved
into the permanent generation with `gc.freeze()` once loading is done (vLLM freezes its heap after warm-up
for the same reason; SGLang offers it as an API): the collector no longer walks it, and later full
collections only walk what requests created. Frozen objects that lose their last reference are still
freed by reference counting; only reference cycles among them wait until `collect_everything`, which the
registry runs when it unloads a model.
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable


def freeze_heap() -> None:
    """Collect the garbage left by startup or a load, then exclude the survivors from later collections."""
    gc.collect()
    gc.freeze()


def collect_everything() -> None:
    """A full collection that also sees frozen objects (an unloaded model's cycles), then freeze again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


# Pinned malloc thresholds: see bound_heap_retention.
MMAP_THRESHOLD_BYTES = 256 << 10
TRIM_THRESHOLD_BYTES = 4 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def bound_heap_retention(
    mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES
) -> None:
    """Pin glibc's mmap and trim thresholds, so freed activation buffers go back to the OS at once.

    By default glibc raises its mmap threshold to the largest freed mapped block (up to 32 MiB) and trims
    the heap top only past twice that: after a model load, every activation buffer under 32 MiB lives in
    the heap and up to 64 MiB of freed ones stay resident. An 8,000-token prompt prefilled in 512-token
    chunks (SmolLM2-135M, 352 MiB of KV) so peaked at the KV + 45-65 MiB; pinned (blocks from 256 KiB are
    mapped and unmapped, at most 4 MiB free at the heap top stays), + 19-28. Prefill and decode times were
    within the noise of the default (alternated in one process: decode at 1 and 8 rows, 3k-token prefill).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    except (OSError, AttributeError):  # not glibc
        pass


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise): lower RSS after loading/bursts."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class CollectionTimer:
    """Times every garbage collection of the process and reports (generation, seconds) to `observe`.

    gc.callbacks is process-wide; each app installs its own timer for its lifetime and removes it after.
    """

    def __init__(self, observe: Callable[[int, float], None]) -> None:
        self.observe = observe
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.observe(info["generation"], time.perf_counter() - self._started)
            self._started = None

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
