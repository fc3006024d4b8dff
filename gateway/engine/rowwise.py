"""fp32 and weight-only int8 Linear layers for decode-sized batches: a small C kernel, built on this machine.

Why by hand: a decode step multiplies 1-16 rows by every weight matrix, so it should run at memory
bandwidth. Measured on a 2-core Sapphire Rapids (fp32, SmolLM2-135M's shapes, all layers in turn so the
weights come from DRAM): MKL's sgemm (torch's Linear) and oneDNN's pre-packed kernel reach 18-27 GB/s
at 1 row but 6-13 GB/s at 8 rows (compute there is 4 flops per weight byte, far below either core's
peak: the kernels do not overlap streaming the weights with the arithmetic), and MKL's packed sgemm
only serves one fixed row count and holds the weights twice. This kernel reads each weight once per 8
rows, prefetches the next tile's weight rows, and reached 15-25 GB/s at 1-8 rows. It keeps
nn.Linear's own weight (no second copy: a tied output layer stays shared with the embeddings), and
a row's result does not depend on the other rows in the call. The same tiles read int8 weights with one
scale per output row (`Int8RowwiseLinear`): a quarter of the bytes, activations kept in fp32.

It is compiled with the machine's C compiler for the machine's own vector ISA (gateway/engine/native.py);
without a compiler it is simply not used (`build_rowwise_kernel` returns None) and the loader keeps
another layout.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import torch

from gateway.engine.native import build_library
from gateway.engine.speed import copy_off_checkpoint, replace_linears

SOURCE = Path(__file__).with_name("rowwise_gemm.c")
# Above this, torch's Linear was as fast or faster (SmolLM2, every layer once: kernel vs torch 82 vs 90 ms at
# 32 rows, 138 vs 131 at 48, 1506 vs 807 at 512: prefill is compute-bound, where MKL's blocking wins)
ROWWISE_MAX_ROWS = 32


class RowwiseKernel:
    """The loaded library: `kernel(x, weight, bias, scale)` is F.linear for a contiguous fp32 [M, K] x, with an
    fp32 weight, or an int8 weight and one fp32 scale per output row (weight-only int8)."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        pointer, integer = ctypes.c_void_p, ctypes.c_int
        self._fns = {}
        for dtype, name in ((torch.float32, "rowwise_gemm_f32"), (torch.int8, "rowwise_gemm_i8")):
            fn = getattr(library, name)
            fn.argtypes = [pointer] * 5 + [integer] * 4
            fn.restype = None
            self._fns[dtype] = fn

    def address(self, dtype: torch.dtype) -> int | None:
        """The C function for weights of `dtype` (fp32 or int8), for other native code to call; None otherwise."""
        fn = self._fns.get(dtype)
        return None if fn is None else ctypes.cast(fn, ctypes.c_void_p).value

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        rows, inner = x.shape
        out = torch.empty(rows, weight.shape[0], dtype=torch.float32, device=x.device)
        self._fns[weight.dtype](  # ctypes releases the GIL for the call, as a torch op would
            x.data_ptr(),
            weight.data_ptr(),
            None if scale is None else scale.data_ptr(),
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            rows,
            weight.shape[0],
            inner,
            torch.get_num_threads(),  # the engine's thread tuner sets it per phase
        )
        return out


def build_rowwise_kernel(cache_dir: Path) -> RowwiseKernel | None:
    """Compile (once per CPU, compiler and source) and load the kernel; None where that is not possible."""
    built = build_library(SOURCE, cache_dir)
    return None if built is None else RowwiseKernel(*built)


class RowwiseLinear(torch.nn.Module):
    """nn.Linear (fp32, CPU) that runs few rows through the rowwise kernel and more through torch.

    The weight and bias are the original module's parameters (shared, not copied). Inference only.
    """

    def __init__(self, linear: torch.nn.Linear, kernel: RowwiseKernel) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.kernel = kernel

    def gemm_address(self) -> int | None:
        """The C function computing this layer, for other native code (the fused decode layers) to call."""
        return self.kernel.address(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.shape[0] > ROWWISE_MAX_ROWS or flat.dtype != torch.float32 or flat.requires_grad:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        out = self.kernel(flat.contiguous(), self.weight, self.bias)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rowwise fp32 kernel"


def runs_on_sgemm(layer: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether `layer(x)` (2-D x) is torch's fp32 sgemm: an fp32 nn.Linear, or a RowwiseLinear above its kernel's
    rows. Such a call can write into a given tensor (`linear_into`)."""
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    plain = type(layer) is torch.nn.Linear or (isinstance(layer, RowwiseLinear) and x.shape[0] > ROWWISE_MAX_ROWS)
    if not plain or weight is None or not x.dtype == weight.dtype == torch.float32:
        return False
    # out= takes no part in autograd: only where nothing would record (the engine runs under inference_mode)
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (x, weight, bias))


def linear_into(layer: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`layer(x)` written into `out`, for a call that `runs_on_sgemm`: addmm / mm, the ops F.linear itself runs
    for a 2-D input, so the same bits."""
    if layer.bias is None:
        return torch.mm(x, layer.weight.t(), out=out)
    return torch.addmm(layer.bias, x, layer.weight.t(), out=out)


def can_use_rowwise(model: torch.nn.Module) -> bool:
    parameter = next(model.parameters())
    return parameter.dtype == torch.float32 and parameter.device.type == "cpu"


def use_rowwise_linears(model: torch.nn.Module, kernel: RowwiseKernel) -> int:
    """Swap every fp32 nn.Linear (the tied output layer too: its weight stays shared) for a RowwiseLinear."""
    count = replace_linears(
        model,
        lambda layer: RowwiseLinear(layer, kernel),
        keep=lambda layer: layer.weight.dtype != torch.float32 or not layer.weight.is_contiguous(),
    )
    # Weights loaded from safetensors are views of the memory-mapped file: their pages count in RSS only
    # once touched and may be evicted under memory pressure (a decode step then waits on the disk). As
    # for the packed layouts, every tensor gets process memory of its own.
    copy_off_checkpoint(model, fresh=())
    return count


# Above this many rows the layer is widened to fp32 for torch's sgemm for the call. SmolLM2, every layer once:
# kernel vs widened 22 vs 312 ms at 8 rows, 353 vs 408 at 128, 1250 vs 1006 at 512 (widening costs ~190 ms).
INT8_KERNEL_MAX_ROWS = 256


def quantize_per_row(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: (int8 values [N, K], fp32 scales [N]) with weight ~ values * scale."""
    scale = weight.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale.contiguous()


class Int8RowwiseLinear(torch.nn.Module):
    """Weight-only int8 Linear: int8 weights with one fp32 scale per output row, fp32 activations.

    A quarter of fp32's bytes per decode step, and only the weights are rounded (per output channel,
    symmetric): activations keep fp32, so no layer has to be left out for its activation outliers (the
    dynamic scheme rounds a whole input tensor to one int8 scale). Large calls (prefill) widen the
    weight to fp32 for that call and run torch's sgemm.
    """

    def __init__(self, linear: torch.nn.Module, kernel: RowwiseKernel) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_per_row(linear.weight.detach().float())
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)
        self.kernel = kernel

    def gemm_address(self) -> int | None:
        """The C function computing this layer, for other native code (the fused decode layers) to call."""
        return self.kernel.address(self.qweight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).float()
        if flat.shape[0] > INT8_KERNEL_MAX_ROWS:
            weight = self.qweight.float() * self.scale[:, None]
            out = torch.nn.functional.linear(flat, weight, self.bias)
        else:
            out = self.kernel(flat.contiguous(), self.qweight, self.bias, self.scale)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight-only int8, rowwise kernel"


def quantize_int8_rowwise(model: torch.nn.Module, kernel: RowwiseKernel, vnni: Any = None) -> int:
    """Every nn.Linear (the output layer too) becomes int8; returns how many. With `vnni` (an
    int8_vnni.VnniKernel) the layers whose input width it takes get int8 activations too, the rest stay
    weight-only."""

    def quantized(layer: torch.nn.Module) -> torch.nn.Module:
        if vnni is not None and vnni.fits(layer.in_features):
            return vnni.linear(layer)
        return Int8RowwiseLinear(layer, kernel)

    count = replace_linears(model, quantized)
    copy_off_checkpoint(model, fresh=(Int8RowwiseLinear,))
    return count


def row_invariant_rows(model: torch.nn.Module) -> int | None:
    """The most rows a call of every Linear layer of `model` can take with each row's result the same as
    alone (the rowwise kernel's row limits); None when a layer runs elsewhere (torch, oneDNN: no such bound).

    The engine keeps a decode row's logits exact in a forward shared with a prompt chunk within it."""
    limits = []
    for module in model.modules():
        if isinstance(module, RowwiseLinear):
            limits.append(ROWWISE_MAX_ROWS)
        elif isinstance(module, Int8RowwiseLinear):
            limits.append(INT8_KERNEL_MAX_ROWS)
        elif isinstance(module, torch.nn.Linear) or hasattr(module, "in_features"):
            return None
    return min(limits) if limits else None
