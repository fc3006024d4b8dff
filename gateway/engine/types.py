"""Internal request/response dataclasses, separate from the OpenAI wire format."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingParams:
    """Generation parameters for one sequence, already resolved from the request and model defaults."""

    max_new_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None = off, k = chosen token + k alternatives
    prompt_logprobs: int | None = None  # echo + logprobs on /v1/completions
    stop_token_ids: frozenset[int] = frozenset()
    skip_special_tokens: bool = True
    # Extra per-sequence constraints (e.g. a JSON grammar): factories, because processors keep state
    # per sequence. Engines call each instance with this sequence's (1, len) ids and (1, vocab) scores,
    # after penalties and bias, before temperature/top-k/top-p.
    logits_processors: tuple[Callable[[], Any], ...] = ()
    # Beam search (num_beams > 1): the engine runs transformers' own `generate` for it (gateway/engine/beam.py);
    # the result comes as one delta at the end (beams cannot stream: the best one is known only then).
    num_beams: int = 1
    no_repeat_ngram_size: int = 0
    early_stopping: bool = False
    length_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass
class SequenceTiming:
    """When a sequence reached the engine and when the engine first worked on it (its queue wait).
    Engines that queue set `scheduled` when they start the sequence; one that never does reports no wait."""

    queued: float = field(default_factory=time.monotonic)
    scheduled: float | None = None

    def start(self) -> None:
        if self.scheduled is None:
            self.scheduled = time.monotonic()

    @property
    def queue_seconds(self) -> float | None:
        return None if self.scheduled is None else self.scheduled - self.queued


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    timing: SequenceTiming = field(default_factory=SequenceTiming, compare=False, repr=False)


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of one position: the token at it plus the top alternatives (decoded text)."""

    token_id: int
    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class GenerationDelta:
    """A piece of one sequence's output; the last one carries finish_reason."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
