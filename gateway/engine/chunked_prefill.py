"""Chunked prefill: a long prompt goes through the model a chunk of positions per engine step.

Why: one forward over a whole 8k-token prompt holds every layer's activations for 8k positions at once
(and, without a memory-efficient attention kernel, 8k x 8k attention scores per head: +2.3-3.1 GB for
SmolLM2-135M), and it stalls every running stream for the whole prefill (155-176 s on a loaded 2-core
machine). In chunks, the forward of chunk i attends to the cache filled by chunks < i (its queries see
`done + size` keys: a chunk x context mask, never prompt x prompt), and the engine runs one decode step
of the running rows with each chunk, so they keep streaming. Alone, a prompt goes in full
`prefill_chunk_tokens` chunks. While rows are decoding, the chunk rides in their decode step's forward
where the lean stack runs (a *mixed* step, as vLLM's chunked prefill batches prompt and decode tokens:
every weight is read once for both), cut so the step takes ~2.25 decode steps (what a chunk token adds
is measured on the mixed steps before: attention to the earlier prompt tokens makes late tokens dearer).
SmolLM2 fp32, one stream decoding while a 2,000-token prompt prefills: its inter-token p95 went from
5.4x normal (chunks alone, 32 tokens at least) to 2.1-2.2x, and the prompt was in 14.6-16.5 s, not 18.8.
Elsewhere (the model's own forward) a chunk runs alone between decode steps, cut to ~1.25 of their time.

The prompt is prefilled in one *pending* row of the shared cache (`BatchKVCache.begin_pending`); its
columns are allocated once for the whole prompt. Only the last chunk's logits are used (its last
position predicts the first new token), so greedy output is the same as a single forward.

Scheduling (`ChunkScheduler.take`): a prompt longer than the chunk is admitted alone (its own
prefill group); shorter prompts are grouped and prefilled in one forward as before, also while a long
one is being prefilled (their rows go before its pending row), so a long prompt no longer holds back
every later request's first token (with a stream decoding, an 8k prompt takes minutes on 2 cores).
One long prompt at a time: a second one, and the requests queued behind it, wait for the first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from gateway.engine.kvcache import BatchKVCache

# While rows are decoding, a chunk takes at most this many decode steps' time (their inter-token latency
# during a long prefill is then ~2.25x normal: p95 under 3x with the noise of a shared machine), but a
# chunk run alone no fewer tokens than MIN_INTERLEAVED_CHUNK (a forward reads every weight once: tiny
# chunks would make the prefill itself many times slower).
INTERLEAVE_RATIO = 1.25
MIN_INTERLEAVED_CHUNK = 32
# A chunk in the same forward as a decode step (a mixed step) adds only its own arithmetic: it can be small.
MIN_MIXED_CHUNK = 4


@dataclass(frozen=True)
class Chunk:
    """The next piece of the pending prompt, targeted in the cache (`target`: `BatchKVCache.target`)."""

    input_ids: torch.Tensor  # [1, size]
    position_ids: torch.Tensor  # [1, size]
    mask: torch.Tensor  # [1, 1, size, prefix + size] (for the model's own forward)
    prefix: int  # prompt tokens already in the cache
    target: tuple[int, int, int, int, int]

    @property
    def size(self) -> int:
        return self.input_ids.shape[1]


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
        self.chunks = 0  # chunks run (for tests and stats)
        self.mixed_token_s: float | None = None  # seconds a chunk token adds to a decode step (measured)
        self.mixed_steps = 0  # of those chunks, how many went in a decode step's forward

    def is_long(self, length: int) -> bool:
        return 0 < self.chunk_tokens < length

    def take(self, waiting: deque, free_slots: int, max_prefill_tokens: int) -> list[Any]:
        """Pop the next prefill group off `waiting`: requests that fit in the free slots and the token budget;
        a long prompt always alone, and none while another is in progress (the requests behind it wait)."""
        taken: list[Any] = []
        tokens = 0
        while waiting and len(taken) < free_slots:
            length = len(waiting[0].request.prompt_ids)
            if self.is_long(length) and (taken or self.current is not None):
                break
            if taken and tokens + length > max_prefill_tokens:
                break
            taken.append(waiting.popleft())
            tokens += length
            if self.is_long(length):
                break
        return taken

    def start(self, cache: BatchKVCache, seq: Any, prompt: list[int]) -> None:
        cache.begin_pending(len(prompt))
        self.current = PendingPrefill(seq=seq, prompt=prompt)

    @staticmethod
    def ratio(waiting: int) -> float:
        """Decode steps' time a chunk may take: INTERLEAVE_RATIO, times 1 + the requests queued behind the
        prompt (their first tokens wait for it: under load the prompt goes faster, the streams' gaps grow)."""
        return INTERLEAVE_RATIO * (1 + waiting)

    def size(self, decoding: bool, decode_step_s: float | None, prefill_token_s: float | None, waiting: int = 0) -> int:
        """Tokens for the next chunk run alone: `chunk_tokens`, but while other rows are decoding no more than
        takes `ratio(waiting)` decode steps (measured), so their inter-token time stays within ~(1 + ratio)x."""
        if not decoding or not decode_step_s or not prefill_token_s:
            return self.chunk_tokens
        fits = int(self.ratio(waiting) * decode_step_s / prefill_token_s)
        return max(min(MIN_INTERLEAVED_CHUNK, self.chunk_tokens), min(self.chunk_tokens, fits))

    def mixed_size(self, rows: int, row_limit: int | None, decode_step_s: float | None, waiting: int = 0) -> int:
        """Tokens of the chunk that goes with a decode step of `rows` rows (0: run it alone instead).

        The step then takes about (1 + ratio(waiting)) decode steps: what a chunk token adds to the step
        is measured on the mixed steps before (it grows with the prompt: attention to the earlier tokens);
        the first ones take MIN_MIXED_CHUNK tokens. `row_limit`: the most rows for which the Linear layers
        give each row the same result as alone; the decode rows keep their exact logits within it, and with
        less room than MIN_MIXED_CHUNK the chunk runs alone. So does a chunk larger than the room while
        requests wait: a big chunk alone costs less per token than many small mixed ones.
        """
        room = self.chunk_tokens if row_limit is None else min(self.chunk_tokens, row_limit - rows)
        least = min(MIN_MIXED_CHUNK, self.chunk_tokens)
        if room < least:
            return 0
        if not decode_step_s or not self.mixed_token_s:
            return least
        wanted = int(self.ratio(waiting) * decode_step_s / self.mixed_token_s)
        if waiting and wanted > room:
            return 0
        return max(least, min(room, wanted))

    def record_mixed(self, seconds: float, decode_step_s: float | None, tokens: int) -> None:
        """Learn what a chunk token adds to a decode step (for `mixed_size`)."""
        self.mixed_steps += 1
        if not decode_step_s or tokens <= 0:
            return
        added = max(seconds - decode_step_s, 0.0) / tokens
        self.mixed_token_s = added if self.mixed_token_s is None else 0.7 * self.mixed_token_s + 0.3 * added

    def next_chunk(self, cache: BatchKVCache, size: int | None = None) -> Chunk:
        """Target the next chunk (`size` tokens, default chunk_tokens) in the cache; then its forward, then
        `finish_chunk`."""
        current = self.current
        assert current is not None
        size = min(size or self.chunk_tokens, current.left)
        position_ids, mask = cache.target_chunk(current.done, size)
        piece = current.prompt[current.done : current.done + size]
        input_ids = torch.tensor([piece], dtype=torch.long, device=cache.device)
        return Chunk(input_ids, position_ids, mask, current.done, cache.target)

    def finish_chunk(self, cache: BatchKVCache, chunk: Chunk) -> bool:
        """The chunk is in the cache; True when it completed the prompt (its row is then the last active one)."""
        current = self.current
        assert current is not None
        current.done += chunk.size
        self.chunks += 1
        if current.left:
            return False
        cache.end_pending(len(current.prompt))
        self.current = None
        return True

    def step(self, cache: BatchKVCache, forward: Any, size: int | None = None) -> torch.Tensor | None:
        """Run the next chunk alone: the last position's logits [1, vocab] once the prompt is complete, else
        None. `forward(work, input_ids, position_ids, mask, prefix)` runs the model (`prefix`: the prompt
        tokens already in the cache, all visible to every token of the chunk)."""
        chunk = self.next_chunk(cache, size)
        logits = forward(chunk.size, chunk.input_ids, chunk.position_ids, chunk.mask, chunk.prefix)
        return logits if self.finish_chunk(cache, chunk) else None

    def cancel(self, cache: BatchKVCache) -> None:
        """Forget the prompt in progress (cancelled, or the engine failed)."""
        if self.current is not None:
            cache.drop_pending()
            self.current = None
