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
import threading
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


# glibc's malloc thresholds (mmap, trim): see MallocThresholds.
SERVING_MMAP_THRESHOLD_BYTES, SERVING_TRIM_THRESHOLD_BYTES = 4 << 20, 16 << 20
LONG_PROMPT_MMAP_THRESHOLD_BYTES, LONG_PROMPT_TRIM_THRESHOLD_BYTES = 256 << 10, 4 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def _mallopt(parameter: int, value: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(parameter, value)
    except (OSError, AttributeError):  # not glibc
        pass


class MallocThresholds:
    """glibc's mmap and trim thresholds, set from what the engines are doing: one setting for the process.

    By default glibc raises its mmap threshold to the largest freed mapped block (up to 32 MiB) and trims
    the heap top only past twice that: after a model load, every activation buffer under 32 MiB lived in the
    heap and up to 64 MiB of freed ones stayed resident. So both are pinned (`install`, before any load), to
    one of two pairs:

    - while serving, blocks up to 4 MiB come from the heap and up to 16 MiB free stay at its top: a decode
      step's logits (8 rows x 49k of SmolLM2: 1.5 MB) and a chat burst's prefill activations (0.3-1 MB,
      ~10 per layer) are reused, not mapped and faulted in anew (a fresh 1.5 MB buffer cost 384 us against 31
      reused; a step's set of buffers in a thread faulted 722 pages each time with a 4 MiB trim threshold, 0
      with 16). A served SmolLM2 int8 (AVX2) did 275 tok/s at 8 streams with (256 KiB, 4 MiB), 298-312 with
      (4 MiB, 4 MiB), TTFT 335 -> 295 ms.
    - (256 KiB, 4 MiB) while any engine prefills a long prompt in chunks: its peak RSS is the prompt's KV plus
      what the heap keeps, and at 8,000 tokens (368 MiB of KV) 2-4 MiB mmap thresholds peaked at 397-407 MiB
      against 366-381 with 256 KiB (the issue's bound: 400 MB). Entering it trims the heap first.
    An idle engine hands the heap's free pages back (`release_free_memory`) either way.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._installed = False
        self._long_prompts: set[int] = set()  # ids of the engines prefilling a long prompt now
        self._mmap_threshold: int | None = None

    def install(self) -> None:
        """Pin the thresholds (the serving ones); from now on engines move the mmap threshold."""
        with self._lock:
            self._installed = True
            self._apply()

    @property
    def mmap_threshold(self) -> int | None:
        """The mmap threshold set now (None before `install`)."""
        return self._mmap_threshold

    def long_prompt(self, owner: object, active: bool) -> None:
        """`owner` (an engine) is, or is no longer, prefilling a long prompt. Cheap when nothing changes:
        engines call it every step."""
        key = id(owner)
        if (key in self._long_prompts) == active:
            return
        with self._lock:
            if active:
                self._long_prompts.add(key)
            else:
                self._long_prompts.discard(key)
            if self._installed:
                self._apply()

    def _apply(self) -> None:
        long_prompt = bool(self._long_prompts)
        mmap, trim = (
            (LONG_PROMPT_MMAP_THRESHOLD_BYTES, LONG_PROMPT_TRIM_THRESHOLD_BYTES)
            if long_prompt
            else (SERVING_MMAP_THRESHOLD_BYTES, SERVING_TRIM_THRESHOLD_BYTES)
        )
        if mmap == self._mmap_threshold:
            return
        _mallopt(_M_MMAP_THRESHOLD, mmap)
        _mallopt(_M_TRIM_THRESHOLD, trim)
        self._mmap_threshold = mmap
        if long_prompt:
            release_free_memory()  # what the heap holds now would otherwise stay beside the long prompt's KV


# The process's one setting, so one object: the app installs it, every engine reports to it.
MALLOC_THRESHOLDS = MallocThresholds()


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
