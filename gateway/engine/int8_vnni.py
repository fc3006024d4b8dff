"""int8 Linear layers with int8 activations too, on AVX-512 VNNI or AVX2: a small C kernel, built on this machine.

Why: weight-only int8 (rowwise.Int8RowwiseLinear) reads a quarter of fp32's bytes but still multiplies in
fp32, one FMA per 16 weights, which is compute-bound from a few rows on. VNNI's vpdpbusd does 64 int8
multiply-adds per instruction, so here the activations are rounded to int8 too, per block of 32 values with
a scale each (llama.cpp's Q8_0 for activations). Every Linear layer of SmolLM2-135M once, 2-core Sapphire
Rapids, weight-only -> this: 1 row 9.9 -> 9.0 ms (memory-bound), 8 rows 15.3 -> 10.9, 32 rows 47.5 -> 21.9,
256 rows 344 -> 131, 512 rows (weight-only widens to fp32 sgemm there) 570 -> 263. Without VNNI (AVX2 CPUs,
and AVX-512 ones before Cascade Lake) the same rounding runs on AVX2's vpmaddubsw/vpmaddwd, with the same
bits; same machine held to AVX2 (ATEN_CPU_CAPABILITY=avx2), weight-only -> this: 1 row 9.1 -> 6.2 ms, 8 rows
18.4 -> 13.5, 16 rows 33.9 -> 24.6, 64 rows 128 -> 80. CPUs with AVX-VNNI but no AVX-512 (Intel's from Alder
Lake on) run vpdpbusd on 256 bits, again with the same bits: 8 rows 15.7 -> 12.5 ms, 64 rows 94 -> 51 against
the AVX2 code (same machine built without AVX-512, a busier moment). Quality, SmolLM2-135M
over 1,024 tokens of English and Markdown, top-1 agreement with fp32 / NLL (fp32 3.7135): weight-only
95.3 % / 3.7175, this 94.2 % / 3.7187, one activation scale per row (torch's dynamic quantization, oneDNN,
fbgemm) 86.6 % / 3.7443: the block scales are why this is by hand.

The kernel keeps the weight-only layer's row scales and int8 values (stored + 128, in the VNNI column order),
and a row's result does not depend on the other rows in the call, at any row count.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from gateway.engine.native import build_library
from gateway.engine.rowwise import Int8RowwiseLinear

SOURCE = Path(__file__).with_name("int8_vnni.c")
GROUP = 16  # output columns per vector in the packed layout
QUAD = 4  # k values per column in one vpdpbusd lane


class VnniKernel:
    """The loaded library: `kernel(x, weight, bias, scale)` for a contiguous fp32 [M, K] x and a packed u8
    weight (`pack_weight`) with one fp32 scale per output row; K a multiple of `block`."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self.block = int(library.int8_vnni_block())
        library.int8_vnni_isa.restype = ctypes.c_char_p
        self.isa = library.int8_vnni_isa().decode()  # "AVX-512 VNNI", "AVX-VNNI" or "AVX2": what it runs on
        # by whether the activations are rounded to int8 (False: fp32, for the engine's start-up checks)
        self._fns = {True: library.int8_vnni_gemm, False: library.int8_vnni_gemm_fp32_activations}
        for fn in self._fns.values():
            fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4
            fn.restype = None

    def address(self, dtype: torch.dtype, int8_activations: bool = True) -> int | None:
        """The C function for packed u8 weights, for other native code to call (the fused decode layers)."""
        fn = self._fns[int8_activations]
        return ctypes.cast(fn, ctypes.c_void_p).value if dtype == torch.uint8 else None

    def fits(self, in_features: int) -> bool:
        return in_features > 0 and in_features % self.block == 0

    def linear(self, layer: torch.nn.Module) -> Int8VnniLinear:
        return Int8VnniLinear(layer, self)

    def __call__(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        scale: torch.Tensor,
        int8_activations: bool = True,
    ) -> torch.Tensor:
        rows, inner = x.shape
        out_features = scale.shape[0]
        out = torch.empty(rows, out_features, dtype=torch.float32, device=x.device)
        self._fns[int8_activations](  # ctypes releases the GIL for the call
            x.data_ptr(),
            weight.data_ptr(),
            scale.data_ptr(),
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            rows,
            out_features,
            inner,
            torch.get_num_threads(),
        )
        return out


def build_vnni_kernel(cache_dir: Path) -> VnniKernel | None:
    """Compile and load the kernel; None without a compiler or where the CPU has neither AVX-512 VNNI nor AVX2."""
    built = build_library(SOURCE, cache_dir)
    if built is None or not built[0].int8_vnni_available():
        return None
    return VnniKernel(*built)


def pack_weight(q: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] -> u8 (value + 128) [ceil(N/16), K/4, 16, 4]: for each 16 columns, 4 k at a time."""
    rows, inner = q.shape
    padded = -(-rows // GROUP) * GROUP
    shifted = torch.full((padded, inner), 128, dtype=torch.int16)
    shifted[:rows] = q.to(torch.int16) + 128
    grouped = shifted.view(padded // GROUP, GROUP, inner // QUAD, QUAD).permute(0, 2, 1, 3)
    return grouped.to(torch.uint8).contiguous()


def unpack_weight(packed: torch.Tensor, rows: int) -> torch.Tensor:
    """The int8 [N, K] values of `pack_weight`'s result."""
    groups, quads = packed.shape[:2]
    flat = packed.permute(0, 2, 1, 3).reshape(groups * GROUP, quads * QUAD)[:rows]
    return (flat.to(torch.int16) - 128).to(torch.int8)


class Int8VnniLinear(Int8RowwiseLinear):
    """int8 weights (one fp32 scale per output row) and int8 activations (one scale per 32 values), at every
    row count on the int8 kernel. `qweight` is the packed u8 layout; `kernel` the VnniKernel."""

    def __init__(self, linear: torch.nn.Module, kernel: VnniKernel) -> None:
        super().__init__(linear, kernel)  # the weight-only layer's int8 values, row scales and bias
        self.qweight = pack_weight(self.qweight)
        self.int8_activations = True  # False only inside `fp32_activations`

    def gemm_address(self) -> int | None:
        return self.kernel.address(self.qweight.dtype, self.int8_activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).float().contiguous()
        out = self.kernel(flat, self.qweight, self.bias, self.scale, self.int8_activations)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"int8 weights and activations (per 32), {self.kernel.isa} kernel"
        )


@contextmanager
def fp32_activations(model: torch.nn.Module) -> Iterator[int]:
    """Within: the model's Int8VnniLinear layers keep their activations fp32 (same weights), so that two paths
    through the model differ only by float rounding, as the engine's start-up checks of the kernels around the
    Linear layers compare them (with int8 activations, a difference of 1e-6 flips a rounding somewhere and the
    logits move by ~1 %). Yields how many layers it switched."""
    layers = [m for m in model.modules() if isinstance(m, Int8VnniLinear)]
    for layer in layers:
        layer.int8_activations = False
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.int8_activations = True
