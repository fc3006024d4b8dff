"""CPU speed options applied after loading: dtype choice, dynamic int8 quantization, torch.compile.

Decode on CPU is bound by reading the weights once per step, so fewer bytes per weight is most of the
speed: bf16 halves them (fast only where the CPU has bf16 instructions), int8 quarters them.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch

logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively (elsewhere they are emulated, slower than fp32)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # private helpers: absent or failing on some builds
            continue
    return False


def auto_cpu_dtype(quantization: str) -> torch.dtype:
    """Fastest safe CPU dtype: bf16 with native bf16 instructions, else fp32 (never fp16 on CPU).

    int8 quantization runs fp32 activations, so it always gets fp32.
    """
    if quantization != "none":
        return torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


# Layers whose input carries the MLP's activation outliers: one int8 scale per input tensor crushes
# them (SmolLM2-135M: logits cosine to fp32 0.71, top-1 agreement 35%); kept in the model dtype
# (pre-packed) they cost ~20% of the int8 speed-up and give cosine 0.91, top-1 agreement 73%.
INT8_SKIP = ("down_proj", "fc2", "w2", "dense_4h_to_h")


def quantize_int8(model: Any) -> int:
    """Dynamic int8 quantization of the Linear layers: int8 weights (per output channel), int8 activations
    with one scale per input tensor, computed at run time. Returns how many layers were quantized.

    torch's own `quantize_dynamic` (fbgemm/oneDNN kernels with VNNI) is used: torchao's int8 dynamic
    config runs through tensor-subclass dispatch on CPU and was >20x slower here without compile.
    The MLP output projections (`INT8_SKIP`) stay in the model dtype. Note: the activation scale
    spans the whole batch, so a row's numbers move slightly with its batch neighbours.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig

    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and name.rsplit(".", 1)[-1] not in INT8_SKIP
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its own future deprecation
        torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    return len(spec)


class PackedLinear(torch.nn.Module):
    """nn.Linear with its weight pre-packed for oneDNN (same dtype and math, another memory layout).

    On CPU, transformers' Linear layers go to an sgemm whose small-batch (decode) path runs well below
    memory bandwidth; the packed oneDNN kernel was 1.5-2.5x faster per layer at 1-16 rows (fp32 and
    bf16), and a row's result does not depend on the other rows of the batch (a lone row: see
    `_single_row_differs`).
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)
        self.pad_single_row = self._single_row_differs()

    def _matmul(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")

    def _single_row_differs(self) -> bool:
        """Whether oneDNN computes a lone row differently from the same row in a batch.

        On a Sapphire Rapids CPU (AVX-512 + AMX) a [576 x 1536] layer (SmolLM2's down_proj) rounded a
        one-row input differently (by ~2e-6) than any batch of 2-1000 rows, which all agreed: a greedy
        request alone then drifted from the same request decoded among others. On the AVX2 EPYC no
        shape did. Which layers do depends on the CPU and oneDNN's kernel choice, so it is measured
        once per layer; those that differ get their lone row computed as a pair.
        """
        probe = torch.randn(2, self.in_features, generator=torch.Generator().manual_seed(0))
        probe = probe.to(self.packed.dtype)
        with torch.inference_mode():
            return not torch.equal(self._matmul(probe[:1]), self._matmul(probe)[:1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.pad_single_row and flat.shape[0] == 1:  # a decode step of one row: the batch kernel's rounding
            out = self._matmul(flat.expand(2, -1))[:1]
        else:
            out = self._matmul(flat)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN-packed"


# oneDNN caches enough primitives for the shapes in use at once (a decode step's 4-5 Linear shapes,
# an interleaved prefill's), not one per row count ever seen.
ONEDNN_CACHE_ENTRIES = 32
ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's, torch's ideep


def bound_onednn_caches(entries: int = ONEDNN_CACHE_ENTRIES) -> None:
    """Cap the two caches of oneDNN primitives; call before the process runs its first oneDNN op.

    A pre-packed Linear runs a primitive built (and JIT-compiled) for the input's row count, and
    oneDNN and torch's ideep layer each keep up to 1024 of them by default. Prefill row counts change
    with every burst, so a long-running server grew without bound: +2.6 MiB RSS per new prompt
    length with SmolLM2-135M (+340 MiB after 120 lengths), flat with 32 entries. Rebuilding an evicted
    primitive costs ~0.3 ms. Values already set in the environment win.
    """
    for name in ONEDNN_CACHE_VARIABLES:
        os.environ.setdefault(name, str(entries))


def can_prepack(model: Any) -> bool:
    dtype = next(model.parameters()).dtype
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and dtype in (torch.float32, torch.bfloat16)
        and next(model.parameters()).device.type == "cpu"
    )


TIED_HEAD_PACK_MAX_BYTES = 256 << 20  # a tied fp32 output layer up to this size is packed (held twice)


def prepack_linears(model: Any, *, tied_head: bool = True) -> int:
    """Swap every nn.Linear for a PackedLinear; a large fp32 output layer tied to the embeddings stays as is.

    A tied lm_head shares its weight with the embedding table, which lookups still need unpacked, so
    packing it holds that matrix twice. For SmolLM2-135M that is +113 MB in fp32 (+57 MB in 16-bit), and
    the output layer is the largest matrix a decode step reads: on an AVX2 EPYC, [49152 x 576] fp32 took
    48 ms unpacked vs 14.5 ms packed at 8 rows (20 vs 10.7 ms at 1 row), ~17% of a decode step of 8 rows.
    Above TIED_HEAD_PACK_MAX_BYTES in fp32 (Gemma-3's 262k-token table: 671 MB) the copy costs more memory
    than it is worth, and the head stays unpacked (as it does with `tied_head=False`). Afterwards every
    remaining tensor is copied off the memory-mapped checkpoint so the replaced weights' file pages leave
    the process as well.
    """
    output = model.get_output_embeddings()
    inputs = model.get_input_embeddings()
    tied = output is not None and inputs is not None and getattr(output, "weight", None) is inputs.weight
    leave_head = not tied_head or inputs.weight.nbytes > TIED_HEAD_PACK_MAX_BYTES
    keep_tied = tied and inputs.weight.dtype == torch.float32 and leave_head
    count = replace_linears(model, PackedLinear, keep=lambda child: keep_tied and child is output)
    copy_off_checkpoint(model, fresh=(PackedLinear,))
    return count


def replace_linears(model: Any, build: Any, keep: Any = lambda child: False) -> int:
    """Put `build(layer)` in place of every plain nn.Linear that `keep` does not keep; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and not keep(child):
                setattr(parent, name, build(child))
                count += 1
    return count


def copy_off_checkpoint(model: Any, fresh: tuple[type, ...]) -> None:
    """Copy every parameter and buffer (but those of the `fresh` module types, made here) off the
    memory-mapped checkpoint, so the pages of the weights that were replaced leave the process too."""
    with torch.no_grad():
        for param in model.parameters():  # tied parameters appear once
            param.data = param.data.clone()
        for module in model.modules():
            for key, buffer in list(module._buffers.items()):
                if buffer is not None and not isinstance(module, fresh):
                    module._buffers[key] = buffer.clone()


def compile_forward(model: Any) -> None:
    """torch.compile the forward pass (dynamic shapes: batch and cache width change every step)."""
    model.forward = torch.compile(model.forward, dynamic=True)


def output_vocab_size(model: Any) -> int:
    """Rows of the output projection, also when it is a quantized module (whose weight is a method)."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if callable(weight):
        weight = weight()
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    out_features = getattr(head, "out_features", None)
    return int(out_features) if out_features else int(model.config.get_text_config(decoder=True).vocab_size)
