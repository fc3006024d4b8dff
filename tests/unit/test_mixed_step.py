"""Mixed steps: a decode step and a chunk of a long prompt in one forward, with the results of both apart.

The lean stack's `mixed` against `decode` then `chunk` on twin caches, per architecture and on the rowwise
kernel's layers (where the decode rows' logits must be bit-identical: a row's result does not depend on
the other rows of the call); how the scheduler sizes the chunk; the thread tuner's `follow`; the decode
window while a prompt is pending; and the engine running mixed steps with the tokens of the plain path.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
import torch

from gateway.engine.batched import BatchedEngine
from gateway.engine.chunked_prefill import INTERLEAVE_RATIO, MIN_MIXED_CHUNK, ChunkScheduler
from gateway.engine.kvcache import BatchKVCache, forward_last_logits
from gateway.engine.lean_forward import LeanForward
from gateway.engine.rowwise import (
    INT8_KERNEL_MAX_ROWS,
    ROWWISE_MAX_ROWS,
    quantize_int8_rowwise,
    row_invariant_rows,
    use_rowwise_linears,
)
from gateway.engine.threads import ThreadTuner
from tests.unit.batched_tiny import collect, gpt2_tokenizer, params
from tests.unit.test_lean_forward import MODELS, VOCAB

pytestmark = pytest.mark.anyio

PROMPT = 45  # tokens of the pending prompt, in chunks of CHUNK with a decode step of two rows each
CHUNK = 8


def run_twins(model: Any, lean: LeanForward | None = None) -> tuple[list, list]:
    """The same work on two caches: decode + chunk apart, and mixed. Per step (decode logits, chunk logits)."""
    generator = torch.Generator().manual_seed(11)
    prompt = torch.randint(0, VOCAB, (1, PROMPT), generator=generator)
    tokens = torch.randint(0, VOCAB, (PROMPT // CHUNK + 3, 3), generator=generator)
    first = torch.randint(0, VOCAB, (2, 9), generator=generator)
    lean = lean or LeanForward(model)
    results: dict[bool, list] = {}
    for mixed in (False, True):
        cache = BatchKVCache(model.config.num_hidden_layers, torch.device("cpu"))
        steps = results[mixed] = []
        with torch.inference_mode():
            positions, mask = cache.begin_prefill([6, 9])  # two rows decoding, a hole in the shorter one
            forward_last_logits(model, cache, first, positions, mask, None)
            cache.end_prefill([6, 9])
            cache.lookahead = 16
            cache.begin_pending(PROMPT)
            done, step = 0, 0
            while done < PROMPT:
                size = min(CHUNK, PROMPT - done)
                cache.tokens[:2] = tokens[step, :2]
                ids, positions, mask = cache.begin_decode()
                piece = prompt[:, done : done + size]
                if mixed:
                    decode = (ids, positions, mask, cache.target)
                    chunk_positions, _ = cache.target_chunk(done, size)
                    both = lean.mixed(cache, decode, (piece, chunk_positions, done, cache.target))
                    steps.append((both[:2], both[2:]))
                    cache.end_decode()
                else:
                    rows = lean.decode(cache, ids, positions, mask)
                    cache.end_decode()
                    chunk_positions, _ = cache.target_chunk(done, size)
                    steps.append((rows, lean.chunk(cache, piece, chunk_positions, done)))
                done, step = done + size, step + 1
            cache.end_pending(PROMPT)
            cache.tokens[:3] = tokens[step]  # then all three rows decode: the KV both ways wrote
            ids, positions, mask = cache.begin_decode()
            steps.append((lean.decode(cache, ids, positions, mask), None))
    return results[False], results[True]


def assert_same(apart: list, mixed: list, exact_rows: bool) -> None:
    assert len(apart) == len(mixed) == -(-PROMPT // CHUNK) + 1
    for step, ((rows_a, chunk_a), (rows_m, chunk_m)) in enumerate(zip(apart, mixed, strict=True)):
        if exact_rows and chunk_a is not None:
            assert torch.equal(rows_a, rows_m), f"step {step}: max diff {(rows_a - rows_m).abs().max()}"
        else:
            assert torch.allclose(rows_a, rows_m, atol=1e-4, rtol=1e-4), (step, (rows_a - rows_m).abs().max())
        if chunk_a is not None:
            assert torch.allclose(chunk_a, chunk_m, atol=1e-4, rtol=1e-4), (step, (chunk_a - chunk_m).abs().max())


@pytest.mark.parametrize("name", list(MODELS))
def test_a_mixed_step_gives_the_decode_and_the_chunk_results(name: str, anyio_backend: str) -> None:
    apart, mixed = run_twins(MODELS[name]())
    assert_same(apart, mixed, exact_rows=False)  # torch's Linear: a row's rounding may depend on the batch


@pytest.mark.parametrize("layers", ["rowwise", "int8"])
def test_on_the_rowwise_kernel_the_decode_rows_stay_bit_identical(layers: str, kernel: Any, anyio_backend: str) -> None:
    model = MODELS["qwen3"]()
    (use_rowwise_linears if layers == "rowwise" else quantize_int8_rowwise)(model, kernel)
    assert row_invariant_rows(model) == (ROWWISE_MAX_ROWS if layers == "rowwise" else INT8_KERNEL_MAX_ROWS)
    apart, mixed = run_twins(model)
    assert_same(apart, mixed, exact_rows=True)


def test_row_invariance_is_only_claimed_for_kernel_layers(kernel: Any, anyio_backend: str) -> None:
    model = MODELS["llama-gqa"]()
    assert row_invariant_rows(model) is None  # torch's Linear
    use_rowwise_linears(model, kernel)
    assert row_invariant_rows(model) == ROWWISE_MAX_ROWS


def test_the_mixed_chunk_fits_the_time_and_row_budget(anyio_backend: str) -> None:
    scheduler = ChunkScheduler(512)
    assert scheduler.mixed_size(2, None, 0.05) == MIN_MIXED_CHUNK  # nothing measured yet: the smallest
    scheduler.record_mixed(0.05 + MIN_MIXED_CHUNK * 0.002, 0.05, MIN_MIXED_CHUNK)
    assert scheduler.mixed_token_s == pytest.approx(0.002)
    fits = int(INTERLEAVE_RATIO * 0.05 / 0.002)
    assert scheduler.mixed_size(2, None, 0.05) == fits
    assert scheduler.mixed_size(2, 32, 0.05) == min(fits, 30)  # rows within the kernel's row-invariant limit
    assert scheduler.mixed_size(29, 32, 0.05) == 0  # too little room: the chunk runs alone
    for _ in range(20):  # the prompt grows, so does what a token adds (attention): smaller chunks, not below the floor
        scheduler.record_mixed(0.05 + 0.5, 0.05, 10)
    assert scheduler.mixed_size(2, None, 0.05) == MIN_MIXED_CHUNK
    assert ChunkScheduler(3).mixed_size(1, None, 0.05) == 3  # never more than a chunk
    # requests queued behind the prompt: its chunks may take longer (their first tokens wait for it) ...
    scheduler.mixed_token_s = 0.002
    assert scheduler.mixed_size(2, None, 0.05, waiting=1) == 2 * fits
    # ... and one larger than the kernel's row room runs alone, as large as the budget allows
    assert scheduler.mixed_size(2, 32, 0.05, waiting=3) == 0
    assert scheduler.size(True, 0.05, 0.002, waiting=3) == int(4 * INTERLEAVE_RATIO * 0.05 / 0.002)
    assert scheduler.size(True, 0.05, 0.002) == max(32, fits)


def test_a_step_that_follows_another_phase_takes_its_best_thread_count(anyio_backend: str) -> None:
    tuner = ThreadTuner(candidates=[1, 2])
    used: list[int] = []
    initial = torch.get_num_threads()
    tuner.run("mixed", 1, lambda: used.append(torch.get_num_threads()), like="decode")
    assert used == [2]  # nothing measured for decode: torch's own setting, no 1-thread trial
    cost = {1: 0.001, 2: 0.003}
    for _ in range(12):
        tuner.run("decode", 1, lambda: time.sleep(cost[torch.get_num_threads()]))
    used.clear()
    for _ in range(10):
        tuner.run("mixed", 20, lambda: used.append(torch.get_num_threads()), like="decode")
    tuner.restore()
    assert used == [1] * 10 and torch.get_num_threads() == initial


def test_decode_rows_do_not_attend_over_a_pending_prompts_columns(anyio_backend: str) -> None:
    cache = BatchKVCache(1, torch.device("cpu"))
    keys = torch.zeros(1, 1, 3, 4)
    cache.begin_prefill([3])
    cache.update(keys, keys, 0)
    cache.end_prefill([3])
    cache.lookahead = 8
    cache.begin_pending(500)
    _, _, mask = cache.begin_decode()
    assert mask.shape[-1] == 4 and bool(mask.all())  # its 3 tokens and the new one, not 500 masked columns
    assert cache.target[-1] == cache.row_start[0]


async def test_the_engine_mixes_chunks_into_decode_steps_with_the_same_tokens(anyio_backend: str) -> None:
    """Short streams decode while long prompts prefill: mixed steps (lean) and chunks alone (model forward)
    give the same tokens and logprobs."""
    from tests.unit.test_chunked_prefill import long_model, random_prompt

    rng = random.Random(21)
    cases = [(random_prompt(rng, n), budget) for n, budget in ((30, 60), (900, 6), (25, 50), (1400, 4))]
    outputs = {}
    for lean in (True, False):
        engine = BatchedEngine(long_model(), gpt2_tokenizer(), name=f"mixed-{lean}", prefill_chunk_tokens=64, lean=lean)
        try:

            async def one(eng: BatchedEngine, prompt: list[int], budget: int, delay: float) -> Any:
                await asyncio.sleep(delay)
                return await collect(eng, prompt, params(budget, logprobs=1))

            results = await asyncio.gather(*[one(engine, p, b, 0.05 * i) for i, (p, b) in enumerate(cases)])
        finally:
            await engine.close()
        assert engine.chunking.chunks > 0
        assert (engine.chunking.mixed_steps > 0) == lean
        assert engine.cache.rows == 0 and engine.cache.pending == 0
        outputs[lean] = results
    for got, want in zip(outputs[True], outputs[False], strict=True):
        assert got.token_ids == want.token_ids
        assert [t.logprob for t in got.logprobs] == pytest.approx([t.logprob for t in want.logprobs], abs=1e-4)
