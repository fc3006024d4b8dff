"""The fused decode layers: torch's stack to rounding, the same bits for a row in any batch and step, checked at start.

The glue operations against torch's (odd lengths, extreme values); every architecture the lean stack claims,
on the rowwise kernel's fp32 and int8 layers, against the torch stack with the same attention kernel; a row
alone and in a batch; decode rows in mixed steps (the Python stack on the same glue) against decode steps;
the guard (layers that disagree are not used); and the engine's greedy tokens with chunked prompts beside.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gateway.engine.batched import BatchedEngine
from gateway.engine.decode_attention import DecodeAttention
from gateway.engine.decode_layers import DecodeLayers, FusedLayers
from gateway.engine.kvcache import BatchKVCache, forward_last_logits
from gateway.engine.lean_forward import LeanForward
from gateway.engine.lean_path import LeanPath
from gateway.engine.rowwise import RowwiseKernel, quantize_int8_rowwise, use_rowwise_linears
from tests.unit.batched_tiny import gpt2_tokenizer
from tests.unit.test_decode_attention import assert_staggered_greedy
from tests.unit.test_lean_forward import MODELS, VOCAB
from tests.unit.test_mixed_step import assert_same, run_twins

pytestmark = pytest.mark.anyio


def on_kernels(name: str, layers: str, kernel: RowwiseKernel) -> Any:
    model = MODELS[name]()
    (use_rowwise_linears if layers == "fp32" else quantize_int8_rowwise)(model, kernel)
    return model


def test_the_glue_gives_torchs_operations(decode_layers: DecodeLayers, anyio_backend: str) -> None:
    generator = torch.Generator().manual_seed(0)
    norm = torch.nn.Module()
    for n in (64, 37, 576):  # whole vectors, a tail, SmolLM2's hidden size
        x = torch.randn(5, n, generator=generator) * 3
        norm.weight, norm.variance_epsilon = torch.randn(n, generator=generator), 1e-5
        expected = F.rms_norm(x, (n,), norm.weight, 1e-5)
        torch.testing.assert_close(decode_layers.rms_norm(norm, x), expected, rtol=2e-6, atol=2e-6)
    t = torch.randn(3, 4, 36, generator=generator)
    cos, sin = torch.randn(3, 1, 36, generator=generator), torch.randn(3, 1, 36, generator=generator)
    expected = t * cos + torch.cat((-t[..., 18:], t[..., :18]), dim=-1) * sin
    torch.testing.assert_close(decode_layers.rotary(t.clone(), cos, sin), expected, rtol=1e-6, atol=1e-6)
    gate = torch.cat([torch.randn(53, generator=generator) * 4, torch.tensor([-120.0, -88.0, 0.0, 88.0, 120.0])])
    up = torch.randn(58, generator=generator)
    expected = F.silu(gate) * up
    torch.testing.assert_close(decode_layers.silu_mul(gate.clone(), up), expected, rtol=2e-6, atol=1e-6)


def test_an_elements_silu_does_not_depend_on_where_it_sits(decode_layers: DecodeLayers, anyio_backend: str) -> None:
    """The tail after whole vectors takes the same vector code: a row's bits never depend on the batch's length."""
    gate = torch.randn(41, generator=torch.Generator().manual_seed(1)) * 5
    whole = decode_layers.silu_mul(gate.clone(), torch.ones(41))
    for start in (0, 3, 17, 40):
        part = decode_layers.silu_mul(gate[start:].clone(), torch.ones(41 - start))
        assert torch.equal(part, whole[start:])


def decode_twice(model: Any, leans: list[LeanForward], steps: int = 4) -> list[list[torch.Tensor]]:
    """Three rows of different lengths (a masked hole) prefilled, then `steps` decode steps on each lean."""
    generator = torch.Generator().manual_seed(3)
    first = torch.randint(0, VOCAB, (3, 11), generator=generator)
    tokens = torch.randint(0, VOCAB, (steps, 3), generator=generator)
    results = []
    for lean in leans:
        cache = BatchKVCache(model.config.num_hidden_layers, torch.device("cpu"))
        logits = []
        with torch.inference_mode():
            positions, mask = cache.begin_prefill([5, 11, 2])
            forward_last_logits(model, cache, first, positions, mask, None)
            cache.end_prefill([5, 11, 2])
            cache.lookahead = steps
            for step in range(steps):
                cache.tokens[:3] = tokens[step]
                ids, positions, mask = cache.begin_decode()
                logits.append(lean.decode(cache, ids, positions, mask))
                cache.end_decode()
        results.append(logits)
    return results


@pytest.mark.parametrize("layers", ["fp32", "int8"])
@pytest.mark.parametrize("name", list(MODELS))
def test_the_fused_layers_give_the_torch_stacks_logits(
    name: str, layers: str, kernel: RowwiseKernel, decode_attention: DecodeAttention, decode_layers: DecodeLayers
) -> None:
    model = on_kernels(name, layers, kernel)
    path = LeanPath(
        model, BatchKVCache(1, torch.device("cpu")), lambda *a: None, attention=decode_attention, layers=decode_layers
    )
    assert (path.attention, path.decode_layers) == ("kernel", "fused")  # the check at start passed
    fused = path.lean.fused
    assert fused is not None and fused.max_rows >= 3
    torch_stack, on_fused = decode_twice(model, [LeanForward(model, decode_attention), path.lean])
    for expected, got in zip(torch_stack, on_fused, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_a_row_gets_the_same_bits_alone(
    kernel: RowwiseKernel, decode_attention: DecodeAttention, decode_layers: DecodeLayers, anyio_backend: str
) -> None:
    model = on_kernels("qwen2", "int8", kernel)
    lean = LeanForward(model, decode_attention, decode_layers.stack(model, decode_attention))
    cache = BatchKVCache(model.config.num_hidden_layers, torch.device("cpu"))
    with torch.inference_mode():
        positions, mask = cache.begin_prefill([5, 11, 2])
        forward_last_logits(model, cache, torch.randint(0, VOCAB, (3, 11)), positions, mask, None)
        cache.end_prefill([5, 11, 2])
        cache.lookahead = 1
        alone = copy.deepcopy(cache)
        ids, positions, mask = cache.begin_decode()
        batch = lean.decode(cache, ids, positions, mask)
        alone.remove_row(2)
        alone.remove_row(0)  # row 1 (the longest) is now row 0, alone, in its own window
        ids, positions, mask = alone.begin_decode()
        assert ids.shape[0] == 1
        assert torch.equal(lean.decode(alone, ids, positions, mask)[0], batch[1])


@pytest.mark.parametrize("name", ["llama-gqa", "qwen3"])
def test_decode_rows_of_mixed_steps_get_the_decode_steps_bits(
    name: str, kernel: RowwiseKernel, decode_attention: DecodeAttention, decode_layers: DecodeLayers
) -> None:
    """Mixed steps carry their chunk through the fused C loop, or (where the fused layers cannot take the step)
    run the Python stack on the fused layers' own glue: either way a decode row's logits are those of a decode
    step, bit for bit, and the chunk's those of the chunk alone to rounding."""
    model = on_kernels(name, "fp32", kernel)
    for spy_type, carried in ((ChunkSpy, True), (NoChunks, False)):
        spy = spy_type(decode_layers.stack(model, decode_attention))
        lean = LeanForward(model, decode_attention, spy)  # type: ignore[arg-type]
        apart, mixed = run_twins(model, lean)
        assert_same(apart, mixed, exact_rows=True)
        assert any(chunk is not None for chunk in spy.chunks) == carried  # the mixed steps took the path meant


class ChunkSpy:
    """Fused layers that note which calls carried a prompt chunk."""

    def __init__(self, fused: FusedLayers) -> None:
        self.fused, self.chunks = fused, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fused, name)

    def __call__(self, *args: Any, chunk: tuple | None = None) -> torch.Tensor:
        self.chunks.append(chunk)
        return self.fused(*args, chunk=chunk)


class NoChunks(ChunkSpy):
    """Fused layers that take decode steps but decline mixed ones (more rows of x than decode rows in `valid`)."""

    def supports(self, x: torch.Tensor, keys: list, values: list, valid: torch.Tensor) -> bool:
        return x.shape[0] == valid.shape[0] and self.fused.supports(x, keys, values, valid)


def test_layers_not_on_the_kernels_are_not_fused(
    decode_attention: DecodeAttention, decode_layers: DecodeLayers, anyio_backend: str
) -> None:
    model = MODELS["llama-gqa"]()  # torch's Linear
    assert decode_layers.stack(model, decode_attention) is None
    path = LeanPath(
        model, BatchKVCache(1, torch.device("cpu")), lambda *a: None, attention=decode_attention, layers=decode_layers
    )
    assert (path.attention, path.decode_layers) == ("kernel", "torch") and path.lean.glue is None


class Wrong(DecodeLayers):
    """The library with a mistake in it: every layer's attention scale 10 % too large."""

    def stack(self, model: Any, attention: DecodeAttention) -> FusedLayers | None:
        fused = super().stack(model, attention)
        assert fused is not None
        fused._dims.scale *= 1.1
        return fused


def test_fused_layers_that_disagree_are_not_used(
    kernel: RowwiseKernel, decode_attention: DecodeAttention, decode_layers: DecodeLayers, anyio_backend: str
) -> None:
    import ctypes

    model = on_kernels("llama-gqa", "fp32", kernel)
    wrong = Wrong(ctypes.CDLL(str(decode_layers.path)), decode_layers.path)
    path = LeanPath(
        model, BatchKVCache(1, torch.device("cpu")), lambda *a: None, attention=decode_attention, layers=wrong
    )
    assert (path.attention, path.decode_layers) == ("kernel", "torch")
    assert path.lean.fused is None and path.lean.glue is None
    # and without the attention kernel there is nothing to fuse with
    plain = LeanPath(model, BatchKVCache(1, torch.device("cpu")), lambda *a: None, layers=decode_layers)
    assert (plain.attention, plain.decode_layers) == ("sdpa", "torch")


async def test_the_engine_decodes_on_the_fused_layers_with_the_models_greedy_tokens(
    kernel: RowwiseKernel, decode_attention: DecodeAttention, decode_layers: DecodeLayers, anyio_backend: str
) -> None:
    """Streams of different lengths, one long prompt prefilled in chunks beside them (mixed steps): every
    request's tokens are the model's own greedy `generate` alone (torch's Linear and SDPA)."""
    from tests.unit.test_chunked_prefill import long_model, random_prompt

    rng = random.Random(9)
    cases = [(random_prompt(rng, n), budget) for n, budget in ((30, 40), (700, 6), (12, 30), (90, 20))]
    model = long_model()
    use_rowwise_linears(model, kernel)
    engine = BatchedEngine(
        model,
        gpt2_tokenizer(),
        name="fused",
        prefill_chunk_tokens=64,
        decode_attention=decode_attention,
        decode_layers=decode_layers,
    )
    assert (engine.lean.attention, engine.lean.decode_layers) == ("kernel", "fused")
    await assert_staggered_greedy(engine, cases)
