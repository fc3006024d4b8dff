"""The decode attention kernel: SDPA's result to rounding, each row on its own columns only, checked at start.

Shapes cover grouped and plain heads, head sizes with a tail after whole vectors (AVX2 8 / AVX-512 16
lanes), windows with masked holes, and keys/values that are strided views of a wider cache, as the
engine passes them. Then the guard (a kernel that disagrees with SDPA is not used) and the engine:
decode and mixed steps on the kernel give the model's own greedy tokens.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gateway.engine.batched import BatchedEngine
from gateway.engine.decode_attention import DecodeAttention
from gateway.engine.kvcache import BatchKVCache
from gateway.engine.lean_path import LeanPath
from tests.unit.batched_tiny import collect, gpt2_tokenizer, params, tiny_model

pytestmark = pytest.mark.anyio


def cache_views(rows: int, kv_heads: int, cols: int, d: int, seed: int) -> tuple[torch.Tensor, ...]:
    """keys, values [rows, kv_heads, cols, d] and valid [rows, cols] as views into a larger cache."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(rows + 2, kv_heads, cols + 9, d, generator=generator)
    values = torch.randn(rows + 2, kv_heads, cols + 9, d, generator=generator)
    valid = torch.rand(rows + 2, cols + 9, generator=generator) > 0.3
    valid[:, 4 + cols - 1] = True  # a row's own newest column
    window = slice(4, 4 + cols)
    return keys[:rows, :, window], values[:rows, :, window], valid[:rows, window]


def sdpa(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
    rows, heads, d = q.shape
    grouped = q.view(rows, keys.shape[1], heads // keys.shape[1], d)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=valid[:, None, None, :], scale=scale)
    return out.reshape(rows, heads * d)


SHAPES = [  # rows, heads, kv_heads, head size, columns
    (1, 9, 3, 64, 7),
    (8, 9, 3, 64, 150),
    (3, 4, 4, 32, 33),
    (5, 32, 8, 128, 300),
    (2, 6, 2, 36, 17),
    (4, 8, 1, 64, 1000),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_kernel_gives_sdpas_attention(shape: tuple, decode_attention: DecodeAttention, anyio_backend: str) -> None:
    rows, heads, kv_heads, d, cols = shape
    keys, values, valid = cache_views(rows, kv_heads, cols, d, seed=cols)
    q = torch.randn(rows, heads, d, generator=torch.Generator().manual_seed(1)) * 2
    assert decode_attention.supports(q, keys, values, valid)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            got = decode_attention(q, keys, values, valid, d**-0.5)
        finally:
            torch.set_num_threads(2)
        torch.testing.assert_close(got, sdpa(q, keys, values, valid, d**-0.5), atol=2e-5, rtol=1e-5)


CHUNK_SHAPES = [  # tokens, heads, kv_heads, head size, prefix (the chunk kernel's blocks are 256 columns)
    (4, 9, 3, 64, 0),
    (1, 9, 3, 64, 255),
    (16, 9, 3, 64, 700),
    (3, 4, 4, 32, 256),
    (5, 6, 2, 36, 513),
    (7, 32, 8, 128, 90),
    (2, 8, 1, 64, 1500),
]


@pytest.mark.parametrize("shape", CHUNK_SHAPES, ids=str)
def test_the_chunk_kernel_gives_causal_attention(
    shape: tuple, decode_attention: DecodeAttention, anyio_backend: str
) -> None:
    """A prompt chunk over one cache row (a strided view, as mixed steps pass it): token t sees the prefix and
    the chunk's tokens up to itself, with any number of threads; equal to SDPA's causal attention to rounding."""
    tokens, heads, kv_heads, d, prefix = shape
    generator = torch.Generator().manual_seed(prefix + tokens)
    cache = torch.randn(2, 2, kv_heads, prefix + tokens + 40, d, generator=generator)
    keys, values = cache[0, 1, :, 5 : 5 + prefix + tokens], cache[1, 1, :, 5 : 5 + prefix + tokens]
    q = torch.randn(tokens, heads, d, generator=generator) * 2
    seen = torch.arange(prefix + tokens)[None, :] <= torch.arange(prefix, prefix + tokens)[:, None]
    grouped = q.transpose(0, 1)[None]
    expected = F.scaled_dot_product_attention(
        grouped, keys[None], values[None], attn_mask=seen, scale=d**-0.5, enable_gqa=True
    )
    expected = expected[0].transpose(0, 1).reshape(tokens, heads * d)
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        try:
            got = decode_attention.chunk(q, keys, values, prefix, d**-0.5)
        finally:
            torch.set_num_threads(2)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_a_rows_result_is_the_same_alone_in_any_window(decode_attention: DecodeAttention, anyio_backend: str) -> None:
    """Masked columns are skipped, not weighted by zero: a row alone (only its own columns) gives the same bits."""
    keys, values, valid = cache_views(6, 2, 200, 64, seed=5)
    q = torch.randn(6, 8, 64, generator=torch.Generator().manual_seed(2))
    batch = decode_attention(q, keys, values, valid, 0.125)
    for row in range(6):
        mine = valid[row].nonzero()[:, 0]
        first = int(mine[0])
        alone = decode_attention(
            q[row : row + 1].contiguous(),
            keys[row : row + 1, :, first:],
            values[row : row + 1, :, first:],
            valid[row : row + 1, first:],
            0.125,
        )
        assert torch.equal(alone, batch[row : row + 1])


def test_layouts_it_cannot_read_keep_sdpa(decode_attention: DecodeAttention, anyio_backend: str) -> None:
    keys, values, valid = cache_views(2, 2, 10, 32, seed=1)
    q = torch.randn(2, 4, 32)
    assert decode_attention.supports(q, keys, values, valid)
    assert not decode_attention.supports(q.bfloat16(), keys.bfloat16(), values.bfloat16(), valid)
    assert not decode_attention.supports(q, keys.transpose(2, 3).transpose(2, 3).contiguous()[..., ::2], values, valid)
    assert not decode_attention.supports(q, keys, values, valid.float())


class Wrong(DecodeAttention):
    """The kernel with a mistake in it: every row attends over its first valid column only."""

    def __call__(self, q, keys, values, valid, scale):  # type: ignore[override]
        only_first = valid & (valid.cumsum(-1) == 1)
        return super().__call__(q, keys, values, only_first.contiguous(), scale)


def test_a_kernel_that_disagrees_with_sdpa_is_not_used(decode_attention: DecodeAttention, anyio_backend: str) -> None:
    model = tiny_model()
    good = LeanPath(model, BatchKVCache(2, torch.device("cpu")), lambda *a: None, attention=decode_attention)
    assert good.path == "lean" and good.attention == "kernel" and good.lean.attention is decode_attention
    wrong = Wrong(*_library(decode_attention))
    bad = LeanPath(model, BatchKVCache(2, torch.device("cpu")), lambda *a: None, attention=wrong)
    assert bad.path == "lean" and bad.attention == "sdpa" and bad.lean.attention is None
    plain = LeanPath(model, BatchKVCache(2, torch.device("cpu")), lambda *a: None)
    assert plain.attention == "sdpa"
    off = LeanPath(model, BatchKVCache(2, torch.device("cpu")), lambda *a: None, allowed=False, attention=wrong)
    assert off.attention == "model"


def _library(kernel: DecodeAttention) -> tuple[Any, Any]:
    import ctypes

    return ctypes.CDLL(str(kernel.path)), kernel.path


async def test_the_engine_decodes_on_the_kernel_with_the_models_greedy_tokens(
    decode_attention: DecodeAttention, anyio_backend: str
) -> None:
    """Streams of different lengths, one long prompt prefilled in chunks beside them (mixed steps): every
    request's tokens are the model's own greedy `generate` alone."""
    from tests.unit.test_chunked_prefill import long_model, random_prompt

    rng = random.Random(8)
    cases = [(random_prompt(rng, n), budget) for n, budget in ((30, 40), (700, 6), (12, 30), (90, 20))]
    engine = BatchedEngine(
        long_model(), gpt2_tokenizer(), name="attention", prefill_chunk_tokens=64, decode_attention=decode_attention
    )
    assert engine.lean.attention == "kernel"
    await assert_staggered_greedy(engine, cases)


async def assert_staggered_greedy(engine: BatchedEngine, cases: list[tuple[list[int], int]]) -> None:
    """The cases' requests arrive 50 ms apart on `engine` (closed after): each gets its model's greedy
    `generate` alone (`solo_greedy`), and some steps were mixed (a prompt's chunk beside decode rows)."""
    from tests.unit.test_chunked_prefill import solo_greedy

    async def one(prompt: list[int], budget: int, delay: float) -> Any:
        await asyncio.sleep(delay)
        return await collect(engine, prompt, params(budget))

    try:
        results = await asyncio.gather(*[one(p, b, 0.05 * i) for i, (p, b) in enumerate(cases)])
    finally:
        await engine.close()
    assert engine.chunking.mixed_steps > 0
    for (prompt, budget), result in zip(cases, results, strict=True):
        assert result.token_ids == solo_greedy(prompt, budget)
