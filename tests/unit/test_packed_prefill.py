"""Packed prefill: short prompts in one flat lean forward, no padding, with the padded forward's results.

Every architecture the lean stack claims: prompts of different lengths, with and without a shared prefix
computed once; the last logits, the cache it leaves (every valid column) and the decode steps after it
against the model's own left-padded forward. Then the engine: a burst goes through the packed forward and
every request gets the model's own greedy tokens.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from gateway.engine.batched import BatchedEngine
from gateway.engine.kvcache import BatchKVCache, forward_last_logits
from gateway.engine.lean_forward import LeanForward
from gateway.engine.lean_path import LeanPath
from tests.unit.batched_tiny import collect, gpt2_tokenizer, params, prompt
from tests.unit.test_lean_forward import MODELS, VOCAB

pytestmark = pytest.mark.anyio

LENGTHS = [13, 4, 9, 1 + 12]


def prompts(shared: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(5)
    prefix = torch.randint(0, VOCAB, (shared,), generator=generator).tolist()
    return [prefix + torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in LENGTHS]


def prefill(model: Any, rows: list[list[int]], shared: int, packed: bool) -> tuple[BatchKVCache, torch.Tensor]:
    """A running row first (the new ones join after it), then the prompts: packed or left-padded."""
    cache = BatchKVCache(model.config.num_hidden_layers, torch.device("cpu"))
    lengths = [len(row) for row in rows]
    forward = lambda *args: forward_last_logits(model, cache, *args, None)  # noqa: E731
    positions, mask = cache.begin_prefill([6])
    forward(torch.arange(6)[None] + 1, positions, mask)
    cache.end_prefill([6])
    cache.lookahead = 3
    if shared:
        positions, mask = cache.begin_shared_prefix(lengths, shared)
    if packed:  # the prefix is the run's first segment, copied to the other rows after it
        cache.begin_prefill(lengths, shared)
        logits = LeanForward(model).prefill(cache, rows[0][:shared], [row[shared:] for row in rows])
        if shared:
            cache.copy_shared_prefix(len(rows), lengths, shared)
    else:
        if shared:
            forward(torch.tensor([rows[0][:shared]]), positions, mask)
            cache.copy_shared_prefix(len(rows), lengths, shared)
        positions, mask = cache.begin_prefill(lengths, shared)
        width = max(lengths) - shared
        ids = torch.tensor([[0] * (width - len(row) + shared) + row[shared:] for row in rows])
        logits = forward(ids, positions, mask)
    cache.end_prefill(lengths, shared)
    return cache, logits


def close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("shared", [0, 10])
@pytest.mark.parametrize("name", list(MODELS))
def test_packed_prefill_gives_the_padded_forwards_results(name: str, shared: int, anyio_backend: str) -> None:
    model = MODELS[name]()
    rows = prompts(shared)
    with torch.inference_mode():
        padded_cache, padded = prefill(model, rows, shared, packed=False)
        packed_cache, packed = prefill(model, rows, shared, packed=True)
        close(packed, padded)
        assert torch.equal(packed.argmax(-1), padded.argmax(-1))
        assert torch.equal(packed_cache.valid, padded_cache.valid)
        valid = padded_cache.valid[: padded_cache.rows, : padded_cache.end]
        for layer in range(model.config.num_hidden_layers):
            for store in ("keys", "values"):
                expected = getattr(padded_cache, store)[layer][: padded_cache.rows, :, : padded_cache.end]
                got = getattr(packed_cache, store)[layer][: packed_cache.rows, :, : packed_cache.end]
                close(got.permute(0, 2, 1, 3)[valid], expected.permute(0, 2, 1, 3)[valid])
        lean = LeanForward(model)
        for _ in range(2):  # decode steps after either prefill: the same logits
            steps = []
            for cache in (padded_cache, packed_cache):
                cache.tokens[: cache.rows] = torch.arange(cache.rows) + 3
                ids, positions, mask = cache.begin_decode()
                steps.append(lean.decode(cache, ids, positions, mask))
                cache.end_decode()
            close(steps[1], steps[0])


@pytest.mark.parametrize("system", ["", "You are a terse assistant. Reply in one short line. "])
async def test_the_engine_prefills_a_burst_packed_with_the_models_tokens(
    system: str, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """A burst goes through the packed forward (with a system prompt: its shared prefix as the run's first
    segment) and every request gets the tokens of the left-padded forward."""
    from tests.unit.batched_tiny import PROMPTS, tiny_model

    model = tiny_model()
    prompts = [prompt(system + text) for text in PROMPTS]
    reference = BatchedEngine(model, gpt2_tokenizer(), name="padded", lean=False)
    try:
        expected = [await collect(reference, ids, params(10)) for ids in prompts]
    finally:
        await reference.close()
    packed: list[int] = []
    original = LeanPath.prefill

    def spy(self: LeanPath, prefix: list[int], suffixes: list[list[int]]) -> torch.Tensor:
        packed.append(len(suffixes))
        return original(self, prefix, suffixes)

    monkeypatch.setattr(LeanPath, "prefill", spy)
    engine = BatchedEngine(model, gpt2_tokenizer(), name="packed")
    try:
        assert engine.lean.mixes
        got = await asyncio.gather(*[collect(engine, ids, params(10)) for ids in prompts])
    finally:
        await engine.close()
    assert sum(packed) == len(PROMPTS) and max(packed) > 1  # prompts went in together, packed
    assert (engine.shared_prefix_tokens > 0) == bool(system)
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]
