"""Logits processors that give every request its own sampling, penalties, bias and logprobs.

`model.generate` runs greedy; the last processor here samples with the request's own torch.Generator
and masks every other token, so a seed never touches the global RNG and concurrent requests cannot
disturb each other's randomness.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gateway.engine.types import SamplingParams

LOGPROB_FLOOR = -9999.0  # JSON has no -inf; vLLM and OpenAI clamp to this
SEED_MODULUS = 1 << 64


class RawLogprobCapture(LogitsProcessor):
    """Keeps the model's own log-probabilities of this step, before any penalty or warper."""

    def __init__(self) -> None:
        self.logprobs: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.logprobs = torch.log_softmax(scores.float(), dim=-1)
        return scores


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's additive presence/frequency penalties over the tokens generated so far."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len = prompt_len
        self.presence = presence
        self.frequency = frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class LogitBias(LogitsProcessor):
    def __init__(self, bias: tuple[tuple[int, float], ...], vocab_size: int, device: torch.device) -> None:
        self.bias = torch.zeros(vocab_size, device=device)
        for token_id, value in bias:
            self.bias[token_id] += value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores + self.bias[: scores.shape[-1]].to(scores.dtype)


StepCallback = Callable[[int, float | None, list[tuple[int, float]]], None]


class SeededSampler(LogitsProcessor):
    """Picks the next token (greedy or sampled with the request's generator) and reports its logprob."""

    def __init__(
        self,
        *,
        greedy: bool,
        generator: torch.Generator | None,
        capture: RawLogprobCapture,
        top_logprobs: int | None,
        on_step: StepCallback,
    ) -> None:
        self.greedy = greedy
        self.generator = generator
        self.capture = capture
        self.top_logprobs = top_logprobs
        self.on_step = on_step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.greedy:
            token = int(torch.argmax(scores[0]))
        else:
            probs = torch.softmax(scores[0].float(), dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        logprob: float | None = None
        top: list[tuple[int, float]] = []
        if self.top_logprobs is not None and self.capture.logprobs is not None:
            raw = self.capture.logprobs[0]
            logprob = max(float(raw[token]), LOGPROB_FLOOR)
            if self.top_logprobs > 0:
                values, indices = torch.topk(raw, self.top_logprobs)
                top = [(int(i), max(float(v), LOGPROB_FLOOR)) for v, i in zip(values, indices, strict=True)]
        self.on_step(token, logprob, top)
        masked = torch.full_like(scores, float("-inf"))
        masked[:, token] = 0.0
        return masked


def row_processors(
    params: SamplingParams, *, prompt_len: int, vocab_size: int, device: torch.device
) -> list[LogitsProcessor]:
    """Penalties, logit_bias, then the request's own processors (grammars): the part of the chain every
    engine applies to a sequence's scores before temperature/top-k/top-p and sampling."""
    chain: list[LogitsProcessor] = []
    if params.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.presence_penalty or params.frequency_penalty:
        chain.append(OpenAIPenalties(prompt_len, params.presence_penalty, params.frequency_penalty))
    if params.logit_bias:
        chain.append(LogitBias(params.logit_bias, vocab_size, device))
    chain.extend(factory() for factory in params.logits_processors)
    return chain


def request_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """The request's own RNG (seeded from params.seed, or randomly); None for greedy decoding."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        # torch takes seeds in [-2**63, 2**64) and reads negative ones modulo 2**64: the same reduction
        # keeps every seed it accepts as it was and makes the rest (e.g. seed + choice index) valid.
        generator.manual_seed(params.seed % SEED_MODULUS)
    return generator


def build_processors(
    params: SamplingParams,
    *,
    prompt_len: int,
    vocab_size: int,
    device: torch.device,
    on_step: StepCallback,
) -> LogitsProcessorList:
    """The per-request chain: raw capture → penalties → bias → warpers → seeded sampler."""
    capture = RawLogprobCapture()
    chain: list[LogitsProcessor] = [capture]
    chain += row_processors(params, prompt_len=prompt_len, vocab_size=vocab_size, device=device)
    if not params.greedy:
        if params.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k and params.top_k > 0:
            chain.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            chain.append(TopPLogitsWarper(params.top_p))
        if params.min_p > 0.0:
            chain.append(MinPLogitsWarper(params.min_p))
    chain.append(
        SeededSampler(
            greedy=params.greedy,
            generator=request_generator(params, device),
            capture=capture,
            top_logprobs=params.logprobs,
            on_step=on_step,
        )
    )
    return LogitsProcessorList(chain)


# Prompt positions per forward: their logits take chunk × vocab floats at a time (~200 MB at a 49k vocabulary).
# Smaller chunks cost speed: SmolLM2, 1051 tokens, CPU: one forward 24-30 s under load, chunks of 1024 the same,
# chunks of 256 55-62 s.
PROMPT_LOGPROBS_CHUNK = 1024


def prompt_logprobs(model: Any, prompt_ids: list[int], k: int, *, chunk: int = PROMPT_LOGPROBS_CHUNK) -> list:
    """Per prompt position p>0: (logprob of prompt_ids[p] given the prefix, top-k [(id, logprob)]).

    The prompt goes through the model a chunk at a time over a KV cache, so only chunk × vocab logits
    exist at once (one forward over an 8k-token prompt materialized 8k × 49k floats: +3 GB). The last
    token predicts nothing here, so it is not fed at all.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache()
    out: list[tuple[float, list]] = []
    inputs = prompt_ids[:-1]
    for start in range(0, len(inputs), chunk):
        piece = inputs[start : start + chunk]
        logits = model(input_ids=torch.tensor([piece], device=device), past_key_values=cache, use_cache=True).logits
        out += _position_logprobs(logits[0], prompt_ids[start + 1 : start + 1 + len(piece)], k)
    return out


def _position_logprobs(logits: torch.Tensor, targets: list[int], k: int) -> list[tuple[float, list]]:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, torch.tensor(targets, device=logprobs.device)[:, None])[:, 0]
    chosen_list = chosen.clamp(min=LOGPROB_FLOOR).tolist()
    if k <= 0:
        return [(value, []) for value in chosen_list]
    values, indices = torch.topk(logprobs, k, dim=-1)
    top_values, top_ids = values.clamp(min=LOGPROB_FLOOR).tolist(), indices.tolist()
    return [
        (value, list(zip(ids, vals, strict=True)))
        for value, ids, vals in zip(chosen_list, top_ids, top_values, strict=True)
    ]
