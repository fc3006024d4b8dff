"""int8 layers with int8 activations on AVX-512 VNNI (gateway/engine/int8_vnni.py).

The packed layout round trip (any CPU); on a VNNI CPU: the kernel against a torch reference of the same
rounding (activations per block of 32, weights per output row), a row's bits alone and in any batch, the
fp32-activation twin the start-up checks use, which layers the loader puts on it, and the engine on the
fused decode layers over it (checked at start, row-invariant in mixed steps, greedy rows alone and batched).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gateway.engine import linear_layout, native
from gateway.engine.batched import BatchedEngine
from gateway.engine.decode_attention import DecodeAttention
from gateway.engine.decode_layers import DecodeLayers
from gateway.engine.int8_vnni import (
    Int8VnniLinear,
    VnniKernel,
    build_vnni_kernel,
    fp32_activations,
    pack_weight,
    unpack_weight,
)
from gateway.engine.kvcache import BatchKVCache
from gateway.engine.lean_path import LeanPath
from gateway.engine.rowwise import INT8_KERNEL_MAX_ROWS, Int8RowwiseLinear, RowwiseKernel, quantize_int8_rowwise
from tests.unit.batched_tiny import gpt2_tokenizer, greedy_alone_and_among_hot, tiny_model
from tests.unit.test_lean_forward import MODELS
from tests.unit.test_mixed_step import assert_same, run_twins

pytestmark = pytest.mark.anyio

# (out, in, bias): SmolLM2's k/v and MLP-down shapes, columns not a multiple of 16, a bias
SHAPES = [(192, 576, True), (576, 1536, False), (50, 64, True), (33, 96, False)]


def reference(layer: Int8VnniLinear, x: torch.Tensor) -> torch.Tensor:
    """The kernel's rounding in torch, summed in float64: x rounded per block of 32 (scale max|x| / 127)."""
    blocks = x.view(x.shape[0], -1, 32)
    peak = blocks.abs().amax(-1, keepdim=True)
    # 127 / peak as the kernel divides (torch's `127.0 / t` multiplies by a reciprocal: one ulp off at times)
    inverse = torch.where(peak > 0, torch.full_like(peak, 127.0) / peak, torch.zeros_like(peak))
    rounded = (torch.round(blocks * inverse) * (peak / 127.0)).view_as(x)
    weight = unpack_weight(layer.qweight, layer.out_features).double() * layer.scale.double()[:, None]
    out = rounded.double() @ weight.T
    return (out if layer.bias is None else out + layer.bias.double()).float()


def test_the_packed_layout_round_trips(anyio_backend: str) -> None:
    q = torch.randint(-127, 128, (37, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    packed = pack_weight(q)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 16, 16, 4)  # 48 columns (11 padded), 16 quads
    assert torch.equal(unpack_weight(packed, 37), q)
    assert packed[0, 0, 0, 1] == int(q[0, 1]) + 128 and packed[1, 2, 3, 0] == int(q[19, 8]) + 128
    assert bool((packed[2, :, 5:] == 128).all())  # the padded columns hold zero weights


@pytest.mark.parametrize("out_features, in_features, bias", SHAPES)
def test_the_kernel_rounds_activations_per_block_of_32(
    vnni: VnniKernel, out_features: int, in_features: int, bias: bool
) -> None:
    layer = Int8VnniLinear(torch.nn.Linear(in_features, out_features, bias=bias), vnni)
    generator = torch.Generator().manual_seed(1)
    for rows in (1, 2, 3, 4, 5, 8, 13, 40):
        x = torch.randn(rows, in_features, generator=generator) * 3
        x[0, :32] = 0.0  # an all-zero block
        with torch.inference_mode():
            got, expected = layer(x), reference(layer, x)
        error = float((got - expected).abs().max() / expected.abs().max())
        assert error < 1e-5, f"{rows} rows: relative error {error:.3g}"


def test_a_row_gets_the_same_bits_alone_and_in_any_batch(vnni: VnniKernel, anyio_backend: str) -> None:
    layer = Int8VnniLinear(torch.nn.Linear(576, 200), vnni)
    x = torch.randn(INT8_KERNEL_MAX_ROWS + 44, 576, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        batch = layer(x)  # more rows than the weight-only kernel takes: VNNI takes any count
        alone = torch.cat([layer(x[i : i + 1]) for i in range(x.shape[0])])
        middle = layer(x[7:13])
    assert torch.equal(alone, batch) and torch.equal(middle, batch[7:13])


@pytest.mark.parametrize(
    "flags, isa",
    [
        (native._CAPPED_ISA_FLAGS["AVX2"], "AVX2"),  # what torch's dispatch held to AVX2 builds (Zen 1-3)
        (["-mno-avx512f"], "AVX-VNNI"),  # no AVX-512 but AVX-VNNI, as on an Alder Lake
    ],
)
def test_the_narrower_isas_give_the_same_bits_as_avx512_vnni(
    vnni: VnniKernel, flags: list[str], isa: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """The kernel built for AVX2 or AVX-VNNI computes exactly what AVX-512's vpdpbusd computes."""
    if vnni.isa != "AVX-512 VNNI":
        pytest.skip(f"this CPU runs the {vnni.isa} code: nothing to compare it with")
    monkeypatch.setattr(native, "_isa_cap_flags", lambda: flags)
    narrow = build_vnni_kernel(tmp_path)
    if isa == "AVX-VNNI" and (narrow is None or narrow.isa != isa):
        pytest.skip("this CPU has no AVX-VNNI")
    assert narrow is not None and narrow.isa == isa
    generator = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        for out_features, in_features, bias in [*SHAPES, (50, 576, False)]:
            layer = Int8VnniLinear(torch.nn.Linear(in_features, out_features, bias=bias), vnni)
            for rows in (1, 3, 4, 8, 13):
                x = torch.randn(rows, in_features, generator=generator) * 3
                got = narrow(x, layer.qweight, layer.bias, layer.scale)
                assert torch.equal(got, vnni(x, layer.qweight, layer.bias, layer.scale)), (rows, out_features)


def test_fp32_activations_run_the_same_weights_unrounded(vnni: VnniKernel, anyio_backend: str) -> None:
    """The twin the start-up checks use: the dequantized layer in fp32, then int8 activations again."""
    linear = torch.nn.Linear(96, 70)
    model = torch.nn.Sequential(Int8VnniLinear(linear, vnni))
    layer = model[0]
    x = torch.randn(9, 96, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        dequantized = F.linear(x, unpack_weight(layer.qweight, 70).float() * layer.scale[:, None], linear.bias)
        unrounded = linear(x)
        rounded = layer(x)
        with fp32_activations(model) as switched:
            assert switched == 1 and layer.gemm_address() == vnni.address(torch.uint8, int8_activations=False)
            exact = layer(x)
        assert torch.equal(layer(x), rounded) and layer.gemm_address() == vnni.address(torch.uint8)
    torch.testing.assert_close(exact, dequantized, rtol=1e-5, atol=1e-5)
    error = float((rounded - unrounded).norm() / unrounded.norm())
    assert 0 < error < 0.02, f"relative error to the fp32 layer {error:.4f}"  # both roundings, small


def test_layers_whose_width_is_not_a_multiple_of_32_stay_weight_only(
    kernel: RowwiseKernel, vnni: VnniKernel, tmp_path: Path, anyio_backend: str
) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 40), torch.nn.Linear(40, 8))
    assert quantize_int8_rowwise(model, kernel, vnni) == 2
    assert type(model[0]) is Int8VnniLinear and type(model[1]) is Int8RowwiseLinear

    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(4))
    fp32, on_vnni, weight_only = (MODELS["qwen2"]() for _ in range(3))
    done = linear_layout.apply_int8(on_vnni, "auto", cache_dir=tmp_path)
    assert done == {"int8": f"activations per 32 ({vnni.isa})", "int8_linears": 3 * 7 + 1, "int8_weight_only": 0}
    assert linear_layout.apply_int8(weight_only, "auto", cache_dir=tmp_path, activations=False)["int8"] == (
        "weight-only"
    )
    with torch.inference_mode():
        expected = fp32(ids).logits
        for model, bound in ((on_vnni, 0.995), (weight_only, 0.999)):  # int8 activations: one more rounding
            cosine = F.cosine_similarity(model(ids).logits.flatten(), expected.flatten(), dim=0)
            assert cosine > bound, f"logits cosine to fp32 {cosine:.5f}"


def on_vnni(name: str, kernel: RowwiseKernel, vnni: VnniKernel) -> Any:
    model = MODELS[name]()
    assert quantize_int8_rowwise(model, kernel, vnni) == sum(1 for m in model.modules() if type(m) is Int8VnniLinear)
    return model


@pytest.mark.parametrize("name", ["llama-mha-bias", "qwen3"])
def test_the_kernels_around_the_layers_are_checked_with_fp32_activations(
    name: str, kernel: RowwiseKernel, vnni: VnniKernel, decode_attention: DecodeAttention, decode_layers: DecodeLayers
) -> None:
    """With int8 activations the attention kernel and the fused layers could not pass a 1e-4 check against
    SDPA and the torch stack (a rounding flips); with fp32 activations they do, and then run int8 ones."""
    model = on_vnni(name, kernel, vnni)
    path = LeanPath(
        model, BatchKVCache(1, torch.device("cpu")), lambda *a: None, attention=decode_attention, layers=decode_layers
    )
    assert (path.attention, path.decode_layers) == ("kernel", "fused")
    assert all(m.int8_activations for m in model.modules() if isinstance(m, Int8VnniLinear))
    addresses = {layer.fn for layer in path.lean.fused._layers for layer in [layer.q, layer.down]}
    assert addresses == {vnni.address(torch.uint8)}  # the production stack calls the int8-activation kernel
    assert path.row_limit == INT8_KERNEL_MAX_ROWS
    apart, mixed = run_twins(model, path.lean)
    assert_same(apart, mixed, exact_rows=True)  # decode rows: the decode step's bits


@pytest.mark.parametrize("attention", ["sdpa", "kernels"])
async def test_greedy_rows_keep_their_solo_text(
    attention: str, kernel: RowwiseKernel, vnni: VnniKernel, request: pytest.FixtureRequest, anyio_backend: str
) -> None:
    """The engine end to end: the same greedy tokens alone and among sampled neighbours (rows join, leave)."""
    model = copy.deepcopy(tiny_model())  # the cached one is shared with other tests
    assert quantize_int8_rowwise(model, kernel, vnni) > 0
    kernels = {}
    if attention == "kernels":
        kernels = dict(
            decode_attention=request.getfixturevalue("decode_attention"),
            decode_layers=request.getfixturevalue("decode_layers"),
        )
    engine = BatchedEngine(model, gpt2_tokenizer(), name="tiny", max_running=16, max_queued=64, **kernels)
    if attention == "kernels":
        assert (engine.lean.attention, engine.lean.decode_layers) == ("kernel", "fused")
    solo, batch = await greedy_alone_and_among_hot(engine)
    assert [r.token_ids for r in batch] == [r.token_ids for r in solo]
