"""A tiny seeded random Llama with the real GPT-2 tokenizer, and helpers to drive engines with it."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from gateway.engine.types import GenerationDelta, GenerationRequest, SamplingParams
from tests.conftest import tokenizer_fixture


@functools.cache
def gpt2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_fixture("gpt2"))


@functools.cache
def tiny_model(attn: str = "sdpa") -> Any:
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=len(gpt2_tokenizer()),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.3,  # peaked logits: greedy choices are far from ties
        bos_token_id=50256,
        eos_token_id=50256,
        pad_token_id=50256,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).eval()
    model.generation_config = GenerationConfig()
    return model


def prompt(text: str) -> list[int]:
    return gpt2_tokenizer()(text)["input_ids"]


PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived",
    "Hello",
    "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21",
    "Le café est délicieux — 東京 🚀",
]


def params(max_new_tokens: int = 24, **kwargs: Any) -> SamplingParams:
    kwargs.setdefault("temperature", 0.0)
    return SamplingParams(max_new_tokens=max_new_tokens, **kwargs)


@dataclass
class Result:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    prompt_logprobs: list | None = None
    finish_reason: str | None = None
    deltas: int = 0
    ttft: float | None = None


async def collect(engine: Any, ids: list[int], sampling: SamplingParams, request_id: str | None = None) -> Result:
    result = Result()
    started = time.monotonic()
    request = GenerationRequest(request_id=request_id or uuid.uuid4().hex, prompt_ids=ids, params=sampling)
    delta: GenerationDelta
    async for delta in engine.generate(request):
        if delta.token_ids and result.ttft is None:
            result.ttft = time.monotonic() - started
        result.deltas += 1
        result.text += delta.text
        result.token_ids.extend(delta.token_ids)
        if delta.logprobs:
            result.logprobs.extend(delta.logprobs)
        if delta.prompt_logprobs:
            result.prompt_logprobs = delta.prompt_logprobs
        result.finish_reason = delta.finish_reason or result.finish_reason
    return result


async def gather(*coros: Any) -> list[Result]:
    return list(await asyncio.gather(*coros))


async def greedy_alone_and_among_hot(engine: Any) -> tuple[list[Result], list[Result]]:
    """Each of PROMPTS greedy alone, then all of them at once among sampled neighbours (rows join, leave);
    the engine is closed after. Returns (alone, together) in PROMPTS' order."""
    try:
        alone = [await collect(engine, prompt(text), params(40)) for text in PROMPTS]
        hot = [collect(engine, prompt(t), params(40, seed=i, temperature=1.5)) for i, t in enumerate(PROMPTS * 2)]
        together = await gather(*[collect(engine, prompt(text), params(40)) for text in PROMPTS], *hot)
    finally:
        await engine.close()
    return alone, together[: len(PROMPTS)]
