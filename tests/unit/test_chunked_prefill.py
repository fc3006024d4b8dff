"""Chunked prefill: long prompts go through the model a chunk per engine step, with the same output.

A tiny seeded random Llama (real GPT-2 tokenizer, 8k positions) is prompted with random token ids. The
reference for "the same output" is the model's own `generate` (greedy, one request alone), or the engine
with chunking off; chunked runs go through the engine with small chunks so prompts take many of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
import uuid
from contextlib import aclosing
from typing import Any

import pytest
import torch

from gateway.engine.batched import BatchedEngine
from gateway.engine.types import GenerationRequest
from tests.unit.batched_tiny import collect, gpt2_tokenizer, params

pytestmark = pytest.mark.anyio


@functools.cache
def long_model() -> Any:
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    torch.manual_seed(4321)
    config = LlamaConfig(
        vocab_size=len(gpt2_tokenizer()),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        initializer_range=0.3,  # peaked logits: greedy choices are far from ties
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()
    model.generation_config = GenerationConfig()
    return model


def random_prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(100, 50000) for _ in range(length)]


def solo_greedy(prompt: list[int], budget: int) -> list[int]:
    """The model's own greedy generate for one request alone: the reference."""
    model = long_model()
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=budget, min_new_tokens=budget, do_sample=False)
    return out[0, len(prompt) :].tolist()


def engine(chunk: int, **kwargs: Any) -> BatchedEngine:
    return BatchedEngine(long_model(), gpt2_tokenizer(), name=f"chunk{chunk}", prefill_chunk_tokens=chunk, **kwargs)


async def test_chunked_prefill_gives_the_unchunked_tokens_and_logprobs() -> None:
    rng = random.Random(1)
    # longer than the chunk (several chunks, a chunk boundary exactly), and short ones grouped as before
    prompts = [random_prompt(rng, n) for n in (600, 1100, 40, 257, 256, 90)]
    whole, chunked = engine(0), engine(128)
    try:
        greedy = params(12, logprobs=2)
        seeded = params(12, temperature=0.8, top_p=0.9, seed=77)
        expected = [await collect(whole, p, greedy) for p in prompts]
        expected_seeded = [await collect(whole, p, seeded) for p in prompts[:3]]
        got = await asyncio.gather(*[collect(chunked, p, greedy) for p in prompts])
        got_seeded = await asyncio.gather(*[collect(chunked, p, seeded) for p in prompts[:3]])
        assert whole.chunking.chunks == 0
        assert chunked.chunking.chunks >= 5 + 9 + 3 + 5 + 9  # every long prompt took its chunks
        for want, have, prompt in zip(expected, got, prompts, strict=True):
            assert have.token_ids == want.token_ids == solo_greedy(prompt, 12)
            assert [t.top[0][0] for t in have.logprobs] == [t.top[0][0] for t in want.logprobs]
            assert [t.logprob for t in have.logprobs] == pytest.approx([t.logprob for t in want.logprobs], abs=1e-4)
        assert [r.token_ids for r in got_seeded] == [r.token_ids for r in expected_seeded]
        assert chunked.cache.rows == 0 and chunked.cache.pending == 0
    finally:
        await whole.close()
        await chunked.close()


async def _stream(eng: BatchedEngine, prompt: list[int], budget: int, stamps: list[float]) -> list[int]:
    request = GenerationRequest(uuid.uuid4().hex, prompt, params(budget))
    tokens: list[int] = []
    async with aclosing(eng.generate(request)) as deltas:
        async for delta in deltas:
            for _ in delta.token_ids:
                stamps.append(time.monotonic())
            tokens += delta.token_ids
    return tokens


async def test_a_long_prompt_is_prefilled_with_the_heap_kept_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc's mmap threshold is the long-prompt one while its chunks run (the 8k peak-RSS bound), and the
    serving one again once it is in (a step's buffers reused from the heap)."""
    from gateway.gc_heap import (
        LONG_PROMPT_MMAP_THRESHOLD_BYTES,
        MALLOC_THRESHOLDS,
        SERVING_MMAP_THRESHOLD_BYTES,
    )

    MALLOC_THRESHOLDS.install()
    eng = engine(64)
    seen: list[int | None] = []
    chunk = eng._prefill_chunk

    def spy(out: Any) -> bool:
        seen.append(MALLOC_THRESHOLDS.mmap_threshold)
        return chunk(out)

    monkeypatch.setattr(eng, "_prefill_chunk", spy)
    try:
        prompt = random_prompt(random.Random(5), 300)
        assert (await collect(eng, prompt, params(3))).token_ids == solo_greedy(prompt, 3)
        assert len(seen) >= 4 and set(seen) == {LONG_PROMPT_MMAP_THRESHOLD_BYTES}
        assert MALLOC_THRESHOLDS.mmap_threshold == SERVING_MMAP_THRESHOLD_BYTES
    finally:
        await eng.close()


async def test_running_streams_keep_decoding_while_a_long_prompt_prefills() -> None:
    rng = random.Random(2)
    eng = engine(64)
    try:
        short_stamps: list[float] = []
        long_stamps: list[float] = []
        short = asyncio.create_task(_stream(eng, random_prompt(rng, 20), 400, short_stamps))
        while len(short_stamps) < 3:
            await asyncio.sleep(0.005)
        submitted = time.monotonic()
        long_prompt = random_prompt(rng, 3000)
        long_tokens = await _stream(eng, long_prompt, 1, long_stamps)
        during = [t for t in short_stamps if submitted <= t <= long_stamps[0]]
        chunks = -(-3000 // 64)
        # one decode step between chunks: the short stream got ~a token per chunk (at once it would get ~none)
        assert len(during) >= chunks - 3, (len(during), chunks)
        short_tokens = await short
        assert long_tokens == solo_greedy(long_prompt, 1)
        assert len(short_tokens) == 400
    finally:
        await eng.close()


async def test_a_cancelled_long_prompt_frees_its_row_and_others_are_unharmed() -> None:
    rng = random.Random(3)
    eng = engine(64)
    try:
        other_prompt = random_prompt(rng, 30)
        other = asyncio.create_task(collect(eng, other_prompt, params(60)))
        while eng.stats()["running"] == 0:
            await asyncio.sleep(0.005)
        request = GenerationRequest("long", random_prompt(rng, 2500), params(5))
        finishes: list[str | None] = []

        async def consume() -> None:
            async for delta in eng.generate(request):
                finishes.append(delta.finish_reason)

        task = asyncio.create_task(consume())
        while eng.chunking.chunks < 3:
            await asyncio.sleep(0.005)
        await eng.abort("long")
        await asyncio.wait_for(task, 60)
        assert finishes[-1] == "abort"
        assert eng.chunking.current is None and eng.cache.pending == 0
        result = await other
        assert result.token_ids == solo_greedy(other_prompt, 60)
        assert eng.cache.rows == 0
    finally:
        await eng.close()


async def test_randomized_requests_batched_and_chunked_equal_solo_greedy() -> None:
    """40 requests, prompts of 10-4000 tokens, random arrivals and budgets, 8 slots, 256-token chunks:
    each output equals that request's greedy generate alone."""
    rng = random.Random(16)
    cases = [(random_prompt(rng, rng.randint(10, 4000)), rng.randint(1, 16), rng.uniform(0.0, 3.0)) for _ in range(40)]
    eng = engine(256, max_running=8)
    try:

        async def one(prompt: list[int], budget: int, delay: float) -> list[int]:
            await asyncio.sleep(delay)
            return (await collect(eng, prompt, params(budget))).token_ids

        outputs = await asyncio.gather(*[one(*case) for case in cases])
        assert eng.chunking.chunks > 40
        for (prompt, budget, _), output in zip(cases, outputs, strict=True):
            assert output == solo_greedy(prompt, budget), len(prompt)
        assert eng.cache.rows == 0 and eng.cache.pending == 0
    finally:
        await eng.close()


def test_rows_that_join_during_a_chunked_prefill_go_before_the_pending_row(anyio_backend: str) -> None:
    """Cache level: two short prompts prefill while a 45-token prompt is half in; its chunks and every row's
    next decode step are as without them."""
    from gateway.engine.kvcache import BatchKVCache, forward_last_logits

    model = long_model()
    rng = random.Random(9)
    first, long_prompt, joiners = random_prompt(rng, 6), random_prompt(rng, 45), [random_prompt(rng, n) for n in (5, 8)]
    results = {}
    for join in (False, True):
        cache = BatchKVCache(model.config.num_hidden_layers, torch.device("cpu"))
        out = results[join] = []
        with torch.inference_mode():
            positions, mask = cache.begin_prefill([6])
            forward_last_logits(model, cache, torch.tensor([first]), positions, mask, None)
            cache.end_prefill([6])
            cache.lookahead = 8
            cache.begin_pending(45)
            for done in (0, 16, 32):
                size = min(16, 45 - done)
                if done == 16 and join:
                    lengths = [len(p) for p in joiners]
                    positions, mask = cache.begin_prefill(lengths)
                    ids = torch.tensor([[0] * (8 - len(p)) + p for p in joiners])
                    out.append(forward_last_logits(model, cache, ids, positions, mask, None))
                    cache.end_prefill(lengths)
                    assert cache.rows == 3 and cache.pending == 1
                positions, mask = cache.target_chunk(done, size)
                ids = torch.tensor([long_prompt[done : done + size]])
                out.append(forward_last_logits(model, cache, ids, positions, mask, None))
            cache.end_pending(45)
            cache.tokens[: cache.rows] = 100  # the first row and the long one (last) see the same token both ways
            ids, positions, mask = cache.begin_decode()
            out.append(forward_last_logits(model, cache, ids, positions, mask, None))
    alone, joined = results[False], results[True]
    assert len(joined) == len(alone) + 1
    for want, got in zip(alone[:3], [joined[0], *joined[2:4]], strict=True):  # the long prompt's chunks
        assert torch.allclose(want, got, atol=1e-5, rtol=1e-4)
    assert joined[4].shape[0] == 4
    for want, got in ((alone[3][0], joined[4][0]), (alone[3][-1], joined[4][-1])):  # the first row, the long row
        assert torch.allclose(want, got, atol=1e-5, rtol=1e-4)


async def test_a_short_request_is_answered_while_a_long_prompt_prefills() -> None:
    rng = random.Random(5)
    eng = engine(64)
    try:
        stamps: list[float] = []
        other = asyncio.create_task(_stream(eng, random_prompt(rng, 20), 300, stamps))
        while len(stamps) < 2:
            await asyncio.sleep(0.005)
        long_prompt, short_prompt = random_prompt(rng, 3000), random_prompt(rng, 40)
        long_stamps: list[float] = []
        long_task = asyncio.create_task(_stream(eng, long_prompt, 2, long_stamps))
        while eng.chunking.chunks < 3:
            await asyncio.sleep(0.005)
        short_stamps: list[float] = []
        short_tokens = await _stream(eng, short_prompt, 6, short_stamps)
        assert eng.chunking.current is not None  # answered in full while the long prompt is still prefilling
        long_tokens = await long_task
        assert short_stamps[-1] < long_stamps[0]
        assert short_tokens == solo_greedy(short_prompt, 6)
        assert long_tokens == solo_greedy(long_prompt, 2)
        other.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await other
    finally:
        await eng.close()
