"""The rowwise fp32 Linear kernel (built here with the C compiler) and the load-time choice of Linear kernel."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gateway.engine import linear_layout, native, rowwise
from gateway.engine.linear_layout import apply_linear_layout, pick_layout
from gateway.engine.rowwise import ROWWISE_MAX_ROWS, RowwiseLinear, build_rowwise_kernel
from gateway.engine.speed import PackedLinear
from tests.unit.test_batched_speed import fresh_tiny

pytestmark = pytest.mark.anyio


# SmolLM2's shapes, and odd ones: K not a multiple of the vector width, N not a multiple of any tile width
SHAPES = [(576, 576), (1536, 576), (576, 1536), (192, 576), (49, 37), (7, 100), (1, 16)]


@pytest.mark.parametrize("out_features, in_features", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_the_kernel_computes_a_linear_layer(
    kernel: rowwise.RowwiseKernel, out_features: int, in_features: int, bias: bool, anyio_backend: str
) -> None:
    layer = torch.nn.Linear(in_features, out_features, bias=bias)
    x = torch.randn(40, in_features, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = layer(x)
        for rows in (1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 32, 40):
            got = kernel(x[:rows].contiguous(), layer.weight, layer.bias)
            assert torch.allclose(got, expected[:rows], rtol=1e-5, atol=1e-5 * in_features**0.5), f"{rows} rows"


@pytest.mark.parametrize("out_features, in_features", SHAPES)
def test_a_row_gets_the_same_bits_alone_and_in_any_batch(
    kernel: rowwise.RowwiseKernel, out_features: int, in_features: int, anyio_backend: str
) -> None:
    """Every tile shape (1-8 rows, several widths, single columns) does the same arithmetic per output."""
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(3))
    x = torch.randn(ROWWISE_MAX_ROWS, in_features, generator=torch.Generator().manual_seed(4))
    full = kernel(x, weight, None)
    for rows in range(1, ROWWISE_MAX_ROWS):
        assert torch.equal(kernel(x[:rows].contiguous(), weight, None), full[:rows]), f"first {rows} rows"
    for row in (0, 5, ROWWISE_MAX_ROWS - 1):
        assert torch.equal(kernel(x[row : row + 1].contiguous(), weight, None), full[row : row + 1]), f"row {row}"


def test_rowwise_layers_share_the_weights_and_hand_big_batches_to_torch(
    kernel: rowwise.RowwiseKernel, anyio_backend: str
) -> None:
    model = fresh_tiny(tie_word_embeddings=True)
    ids = torch.randint(0, 1000, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(ids).logits
        count = rowwise.use_rowwise_linears(model, kernel)
        after = model(ids).logits  # 27 rows: the kernel; 3 x 9 x ... prefill of 40+ rows: torch
        long_ids = torch.randint(0, 1000, (2, 30), generator=torch.Generator().manual_seed(1))
        hidden = model.model(long_ids).last_hidden_state
        alone = torch.cat([model.model(long_ids[i : i + 1]).last_hidden_state for i in range(2)])
    assert count == 2 * 7 + 1  # every Linear of the two layers and the tied lm_head
    head = model.get_output_embeddings()
    assert isinstance(head, RowwiseLinear)
    assert head.weight is model.get_input_embeddings().weight  # still tied: no second copy of the table
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)
    assert torch.allclose(hidden, alone, atol=1e-5)  # 60 rows go through torch's sgemm (not bit-exact there)


def test_auto_measures_both_kernels_and_keeps_the_faster(tmp_path: Path, anyio_backend: str) -> None:
    model = fresh_tiny()
    done = apply_linear_layout(model, "auto", tied_head=True, cache_dir=tmp_path)
    if done["linear_kernel"] == "onednn" and "measured_ms" not in done:
        pytest.skip("no C compiler with OpenMP on this machine")
    measured = done["measured_ms"]
    assert set(measured) == {"rowwise", "onednn"} and all(set(per) == {1, 8} for per in measured.values())
    assert done["linear_kernel"] == pick_layout(measured)
    expected = RowwiseLinear if done["linear_kernel"] == "rowwise" else PackedLinear
    assert isinstance(model.model.layers[0].self_attn.q_proj, expected)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())


def test_pick_layout_weighs_one_row_and_eight_rows_alike(anyio_backend: str) -> None:
    assert pick_layout({"rowwise": {1: 30.0, 8: 40.0}, "onednn": {1: 50.0, 8: 60.0}}) == "rowwise"
    assert pick_layout({"rowwise": {1: 30.0, 8: 90.0}, "onednn": {1: 33.0, 8: 45.0}}) == "onednn"
    # a few percent faster Linear layers do not outweigh what rowwise brings beyond them (the fused decode step)
    assert pick_layout({"rowwise": {1: 30.0, 8: 50.0}, "onednn": {1: 28.0, 8: 45.0}}) == "rowwise"
    assert pick_layout({"rowwise": {1: 60.0, 8: 100.0}, "onednn": {1: 28.0, 8: 45.0}}) == "onednn"


def test_explicit_choices_and_16_bit_models(tmp_path: Path, anyio_backend: str) -> None:
    model = fresh_tiny()
    assert apply_linear_layout(model, "torch", tied_head=True, cache_dir=tmp_path)["linear_layers"] == 0
    assert all(type(m) is not PackedLinear for m in model.modules())
    model = fresh_tiny()
    done = apply_linear_layout(model, "onednn", tied_head=True, cache_dir=tmp_path)
    assert done["linear_kernel"] == "onednn" and isinstance(model.model.layers[0].mlp.up_proj, PackedLinear)
    model = fresh_tiny().to(torch.bfloat16)
    done = apply_linear_layout(model, "auto", tied_head=True, cache_dir=tmp_path)
    assert done["linear_kernel"] == "onednn"  # the rowwise kernel is fp32 only
    assert not (tmp_path / "kernels").exists()  # nothing compiled for a bf16 model


def test_without_a_compiler_the_loader_keeps_onednn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert build_rowwise_kernel(tmp_path) is None
    model = fresh_tiny()
    done = apply_linear_layout(model, "rowwise", tied_head=True, cache_dir=tmp_path)
    assert done["linear_kernel"] == "onednn"
    assert isinstance(model.model.layers[0].mlp.down_proj, PackedLinear)


def test_the_kernel_is_compiled_once_per_cpu_and_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    first = build_rowwise_kernel(tmp_path)
    if first is None:
        pytest.skip("no C compiler with OpenMP on this machine")
    built_at = first.path.stat().st_mtime_ns
    assert build_rowwise_kernel(tmp_path).path == first.path
    assert first.path.stat().st_mtime_ns == built_at  # reused, not rebuilt
    monkeypatch.setattr(native, "_cpu_fingerprint", lambda: "flags : another cpu")
    assert build_rowwise_kernel(tmp_path).path != first.path  # another CPU gets its own build
    assert len(list((tmp_path / "kernels").glob("*.so"))) == 2
    monkeypatch.setattr(linear_layout, "MEASURE_MAX_BYTES", 0)  # too big to measure: rowwise, no packed copy
    done = apply_linear_layout(fresh_tiny(), "auto", tied_head=True, cache_dir=tmp_path)
    assert done["linear_kernel"] == "rowwise" and "measured_ms" not in done


@pytest.mark.parametrize("out_features, in_features", SHAPES)
def test_weight_only_int8_layers_round_only_the_weights(
    kernel: rowwise.RowwiseKernel, out_features: int, in_features: int, anyio_backend: str
) -> None:
    layer = torch.nn.Linear(in_features, out_features)
    int8 = rowwise.Int8RowwiseLinear(layer, kernel)
    assert int8.qweight.dtype == torch.int8 and int8.scale.shape == (out_features,)
    most = rowwise.INT8_KERNEL_MAX_ROWS
    x = torch.randn(1, most + 16, in_features, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        exact = layer(x)
        dequantized = torch.nn.functional.linear(x, int8.qweight.float() * int8.scale[:, None], layer.bias)
        small, large = int8(x[:, :9]), int8(x)  # 9 rows: the kernel; more than `most`: widened to fp32 for torch
        alone = torch.cat([int8(x[:, i : i + 1]) for i in range(40)], dim=1)
        batch = int8(x[:, :most])
    assert torch.allclose(small, dequantized[:, :9], rtol=1e-5, atol=1e-5 * in_features**0.5)
    assert torch.allclose(large, dequantized, rtol=1e-5, atol=1e-5 * in_features**0.5)
    assert torch.equal(alone, batch[:, :40])  # up to `most` rows: the same bits alone or in a batch
    error = (small - exact[:, :9]).norm() / exact[:, :9].norm()
    assert error < 0.02, f"relative error {error:.4f}"  # per-row int8 weights, fp32 activations


def test_an_int8_model_keeps_fp32_quality_and_every_layer_is_int8(tmp_path: Path, anyio_backend: str) -> None:
    model = fresh_tiny(tie_word_embeddings=True)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        before = model(ids).logits
        done = linear_layout.apply_int8(model, "auto", cache_dir=tmp_path, activations=False)  # VNNI: its own tests
        if done["int8"] == "dynamic":
            pytest.skip("no C compiler with OpenMP on this machine")
        after = model(ids).logits
    assert done == {"int8": "weight-only", "int8_linears": 2 * 7 + 1}  # down_proj and the tied head too
    layout = apply_linear_layout(model, "auto", tied_head=True, cache_dir=tmp_path)
    assert layout == {"linear_kernel": "torch", "linear_layers": 0}  # nothing left to measure or swap
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert type(model.get_input_embeddings()) is torch.nn.Embedding  # lookups keep the fp32 table
    cosine = torch.nn.functional.cosine_similarity(before.flatten(), after.flatten(), dim=0)
    assert cosine > 0.999, f"logits cosine to fp32 {cosine:.5f}"


def test_int8_without_the_kernel_is_torch_dynamic_quantization(tmp_path: Path, anyio_backend: str) -> None:
    model = fresh_tiny()
    done = linear_layout.apply_int8(model, "onednn", cache_dir=tmp_path)  # the rowwise kernel ruled out
    assert done["int8"] == "dynamic"
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear  # left to the Linear kernel choice


@pytest.mark.parametrize("layout", ["rowwise fp32", "weight-only int8"])
async def test_greedy_rows_keep_their_solo_text_on_the_kernel(
    kernel: rowwise.RowwiseKernel, layout: str, anyio_backend: str
) -> None:
    """The engine end to end: the same greedy tokens alone and among sampled neighbours (rows join, leave)."""
    from gateway.engine.batched import BatchedEngine
    from tests.unit.batched_tiny import gpt2_tokenizer, greedy_alone_and_among_hot, tiny_model

    model = copy.deepcopy(tiny_model())  # the cached one is shared with other tests
    if layout == "rowwise fp32":
        assert rowwise.use_rowwise_linears(model, kernel) > 0
    else:
        assert rowwise.quantize_int8_rowwise(model, kernel) > 0
    engine = BatchedEngine(model, gpt2_tokenizer(), name="tiny", max_running=16, max_queued=64)
    solo, batch = await greedy_alone_and_among_hot(engine)
    for alone, together in zip(solo, batch, strict=True):
        assert together.token_ids == alone.token_ids


CAPPED_BUILD = """
import json, sys, torch
from pathlib import Path
from gateway.engine import native
from gateway.engine.int8_vnni import build_vnni_kernel
from gateway.engine.rowwise import build_rowwise_kernel
cache = Path(sys.argv[1])
kernel = build_rowwise_kernel(cache)
x, w = torch.randn(8, 576), torch.randn(192, 576)
close = kernel is not None and torch.allclose(kernel(x, w, None), x @ w.T, rtol=1e-5, atol=1e-4)
int8 = build_vnni_kernel(cache)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "flags": native._compile_flags(),
                  "rowwise": None if kernel is None else str(kernel.path), "close": close,
                  "int8": None if int8 is None else [int8.isa, str(int8.path)]}))
"""


def test_a_cap_on_torch_dispatch_keeps_the_kernels_below_it(tmp_path: Path, anyio_backend: str) -> None:
    """ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU: kernels without a single AVX-512 instruction (int8 too)."""
    if native._compiler() is None or shutil.which("objdump") is None:
        pytest.skip("no C compiler or objdump on this machine")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    run = subprocess.run(
        [sys.executable, "-c", CAPPED_BUILD, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    built = json.loads(run.stdout.strip().splitlines()[-1])
    if built["capability"] != "AVX2":
        pytest.skip(f"torch dispatch is {built['capability']} here, not AVX2")
    assert "-march=haswell" in built["flags"] and built["close"] and built["int8"][0] == "AVX2"
    for library in (built["rowwise"], built["int8"][1]):
        code = subprocess.run(["objdump", "-d", library], capture_output=True, text=True, check=True).stdout
        assert "ymm" in code and "zmm" not in code  # AVX2's 256-bit registers, none of AVX-512's
