"""The batched engine's per-request state and how its deltas cross from the engine thread to event loops."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.engine.detok import IncrementalDetokenizer
from gateway.engine.sampling import RowSampling
from gateway.engine.types import GenerationDelta, GenerationRequest, TokenLogprob


def shared_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own (its first logits)."""
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


@dataclass(eq=False)
class Seq:
    """One request inside the engine; touched by the engine thread, except `cancelled`."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    history: list[int] = field(default_factory=list)  # prompt + generated ids (for penalties/processors)
    generated: int = 0
    sampling: RowSampling | None = None
    detok: IncrementalDetokenizer | None = None
    pending: list[int] = field(default_factory=list)  # ids not sent yet (their text is held back)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    failed: bool = False  # ended by its own error (already reported)


class Outbox:
    """Deltas produced in one step, delivered with one thread-safe callback per event loop."""

    def __init__(self) -> None:
        self.items: dict[asyncio.AbstractEventLoop, list[tuple[Seq, Any]]] = {}

    def add(self, seq: Seq, item: GenerationDelta | BaseException) -> None:
        self.items.setdefault(seq.loop, []).append((seq, item))

    def flush(self) -> None:
        for loop, items in self.items.items():
            try:
                loop.call_soon_threadsafe(deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is listening any more
                for seq, _ in items:
                    seq.cancelled = True
        self.items = {}


def deliver(items: list[tuple[Seq, Any]]) -> None:
    for seq, item in items:
        seq.queue.put_nowait(item)
