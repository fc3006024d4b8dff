"""Chunked prefill: a long prompt goes through the model a chunk of positions per engine step.

Why: one forward over a whole 8k-token prompt holds every layer's activations for 8k positions at once
(and, without a memory-efficient attention kernel, 8k x 8k attention scores per head: +2.3-3.1 GB for
SmolLM2-135M), and it stalls every running stream for the whole prefill (155-176 s on a loaded 2-core
machine). In chunks, the forward of chunk i attends to the cache filled by chunks < i (its queries see
`done + size` keys: a chunk x context mask, never prompt x prompt), and the engine runs one decode step
of the running rows between chunks, so they keep streaming. While rows are decoding, a chunk is cut
to what takes about two of their decode steps (measured by the thread tuner), so their inter-token
latency stays near 3x normal; alone, a prompt goes in full `prefill_chunk_tokens` chunks.

The prompt is prefilled in one *pending* row of the shared cache (`BatchKVCache.begin_pending`); its
columns are allocated once for the whole prompt. Only the last chunk's logits are used (its last
position predicts the first new token), so greedy output is the same as a single forward.

Scheduling (`ChunkScheduler.take`): a prompt longer than the chunk is admitted alone (its own
prefill group); shorter prompts are grouped and prefilled in one forward as before. While a chunked
prefill runs, no other request is admitted: they wait for it to end (a known cost: their TTFT
includes the rest of the long prefill).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from gateway.engine.kvcache import BatchKVCache

# While rows are decoding, a chunk takes at most this many decode steps' time (their inter-token latency
# during a long prefill is then ~3x normal), but no fewer tokens than MIN_INTERLEAVED_CHUNK (a forward
# reads every weight once: tiny chunks would make the prefill itself many times slower).
INTERLEAVE_RATIO = 2.0
MIN_INTERLEAVED_CHUNK = 32


@dataclass(eq=False)
class PendingPrefill:
    """One prompt being prefilled a chunk per step."""

    seq: Any  # the engine's Seq (gateway/engine/rows.py)
    prompt: list[int]
    done: int = 0  # prompt positions already in the cache

    @property
    def left(self) -> int:
        return len(self.prompt) - self.done


class ChunkScheduler:
    """Which waiting requests a step admits, and the chunks of a long prompt (see the module docstring)."""

    def __init__(self, chunk_tokens: int) -> None:
        self.chunk_tokens = chunk_tokens  # 0 = off (every prompt in one forward)
        self.current: PendingPrefill | None = None
        self.chunks = 0  # chunk forwards run (for tests and stats)

    def is_long(self, length: int) -> bool:
        return 0 < self.chunk_tokens < length

    def take(self, waiting: deque, free_slots: int, max_prefill_tokens: int) -> list[Any]:
        """Pop the next prefill group off `waiting`: requests that fit in the free slots and the token budget;
        a long prompt always alone; nothing while a chunked prefill is in progress."""
        taken: list[Any] = []
        if self.current is not None:
            return taken
        tokens = 0
        while waiting and len(taken) < free_slots:
            length = len(waiting[0].request.prompt_ids)
            if taken and (tokens + length > max_prefill_tokens or self.is_long(length)):
                break
            taken.append(waiting.popleft())
            tokens += length
            if self.is_long(length):
                break
        return taken

    def start(self, cache: BatchKVCache, seq: Any, prompt: list[int]) -> None:
        cache.begin_pending(len(prompt))
        self.current = PendingPrefill(seq=seq, prompt=prompt)

    def size(self, decoding: bool, decode_step_s: float | None, prefill_token_s: float | None) -> int:
        """Tokens for the next chunk: `chunk_tokens`, but while other rows are decoding no more than takes
        INTERLEAVE_RATIO decode steps (measured), so their inter-token time stays within ~(1 + ratio)x."""
        if not decoding or not decode_step_s or not prefill_token_s:
            return self.chunk_tokens
        fits = int(INTERLEAVE_RATIO * decode_step_s / prefill_token_s)
        return max(min(MIN_INTERLEAVED_CHUNK, self.chunk_tokens), min(self.chunk_tokens, fits))

    def step(self, cache: BatchKVCache, forward: Any, size: int | None = None) -> torch.Tensor | None:
        """Run the next chunk (`size` tokens, default chunk_tokens); the last position's logits [1, vocab] once
        the prompt is complete, else None. `forward(work, input_ids, position_ids, mask, prefix)` runs the
        model (`prefix`: the prompt tokens already in the cache, all visible to every token of the chunk)."""
        current = self.current
        assert current is not None
        size = min(size or self.chunk_tokens, current.left)
        position_ids, mask = cache.target_chunk(current.done, size)
        piece = current.prompt[current.done : current.done + size]
        input_ids = torch.tensor([piece], dtype=torch.long, device=cache.device)
        logits = forward(size, input_ids, position_ids, mask, current.done)
        current.done += size
        self.chunks += 1
        if current.left:
            return None
        cache.end_pending(len(current.prompt))
        self.current = None
        return logits

    def cancel(self, cache: BatchKVCache) -> None:
        """Forget the prompt in progress (cancelled, or the engine failed)."""
        if self.current is not None:
            cache.drop_pending()
            self.current = None
