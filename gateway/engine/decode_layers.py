"""A decode step's decoder layers in one C call (decode_layers.c), on the rowwise and attention kernels.

Why by hand: with the Linear layers and the attention in C, what was left of a SmolLM2 decode step was
per-operation overhead: ~60 small torch ops per layer (norms, rotary, the cache write, SiLU, residuals,
each Linear's output allocation) at 5-10 us each, ~23 of a 69 ms fp32 step at 8 rows (in-process,
2 threads) and ~25 of 54 ms with int8 weights, more than all the int8 weight reads. Here a layer is one
loop in C over buffers allocated once per step, calling the same kernels the Linear modules call.

The per-token operations (RMSNorm, rotary, SiLU x up) are this file's own `glue_*` functions; their bits
differ from torch's by rounding, so the Python stack of mixed steps and prompt chunks (lean_forward.py)
calls the same functions when this path is on: a decode row then gets the same logits in a decode step
and in a mixed one. `LeanPath` compares the result with the torch stack when the engine starts and keeps
the torch stack when they disagree by more than decode_attention.AGREEMENT of the logits' scale.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import torch

from gateway.engine.decode_attention import DecodeAttention
from gateway.engine.native import build_library
from gateway.engine.rowwise import INT8_KERNEL_MAX_ROWS, ROWWISE_MAX_ROWS, Int8RowwiseLinear, RowwiseLinear

SOURCE = Path(__file__).with_name("decode_layers.c")
_P, _I, _L, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float


class _Linear(ctypes.Structure):
    _fields_ = [("fn", _P), ("weight", _P), ("scale", _P), ("bias", _P), ("out", _I), ("inp", _I)]


class _Layer(ctypes.Structure):
    _fields_ = [
        *[(name, _P) for name in ("norm_in", "norm_post", "q_norm", "k_norm")],
        *[(name, _F) for name in ("eps_in", "eps_post", "eps_q", "eps_k")],
        *[(name, _Linear) for name in ("q", "k", "v", "o", "gate", "up", "down")],
    ]


class _Dims(ctypes.Structure):
    _fields_ = [("hidden", _I), ("heads", _I), ("kv_heads", _I), ("d", _I), ("inter", _I), ("scale", _F)]


class _Chunk(ctypes.Structure):
    _fields_ = [("tokens", _I), ("prefix", _I), ("key_at", _L), ("value_at", _L), ("attend", _P), ("scratch", _P)]


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class DecodeLayers:
    """The loaded library: the glue operations, and `stack(model, attention)` for a model's fused layers."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._norm = library.glue_rms_norm
        self._norm.argtypes = [_P, _P, _P, _I, _I, _F]
        self._rotary = library.glue_rotary
        self._rotary.argtypes = [_P, _P, _P, _I, _I, _I]
        self._silu_mul = library.glue_silu_mul
        self._silu_mul.argtypes = [_P, _P, _L]
        self.layers = library.decode_layers
        self.layers.argtypes = [_P, _I, _P, _P, _I, _P, _P, _P, _P, _L, _L, _L, _L, _I, _I, _P, _L, _P, _P, _P, _I, _P]
        self.scratch = library.decode_layers_scratch
        self.scratch.argtypes = [_P, _I]
        self.scratch.restype = _L
        for fn in (self._norm, self._rotary, self._silu_mul, self.layers):
            fn.restype = None

    def rms_norm(self, norm: torch.nn.Module, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """LlamaRMSNorm of a contiguous fp32 x over its last dimension, into `out` (x's shape) or a new tensor."""
        out = torch.empty_like(x) if out is None else out
        n = x.shape[-1]
        self._norm(x.data_ptr(), norm.weight.data_ptr(), out.data_ptr(), x.numel() // n, n, norm.variance_epsilon)
        return out

    def rotary(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """t [tokens, heads, d] rotated in place by cos/sin [tokens, 1, d] (contiguous fp32); returns t."""
        tokens, heads, d = t.shape
        self._rotary(t.data_ptr(), cos.data_ptr(), sin.data_ptr(), tokens, heads, d)
        return t

    def silu_mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """gate = silu(gate) * up in place (contiguous fp32, same shape); returns gate."""
        self._silu_mul(gate.data_ptr(), up.data_ptr(), gate.numel())
        return gate

    def stack(self, model: Any, attention: DecodeAttention) -> FusedLayers | None:
        """The model's layers for `decode_layers`; None when a layer is not the kernels' (its Linear layers not
        all rowwise fp32/int8, norms or buffers not fp32 contiguous)."""
        return FusedLayers.build(self, model, attention)


def _linear(module: Any) -> _Linear | None:
    if isinstance(module, RowwiseLinear):
        weight, scale = module.weight, None
    elif isinstance(module, Int8RowwiseLinear):
        weight, scale = module.qweight, module.scale
    else:
        return None
    tensors = [t for t in (weight, scale, module.bias) if t is not None]
    if not all(t.is_contiguous() and t.device.type == "cpu" for t in tensors):
        return None
    if module.bias is not None and module.bias.dtype != torch.float32:
        return None
    address = module.gemm_address()
    if address is None:
        return None
    return _Linear(
        address,
        weight.data_ptr(),
        _pointer(scale),
        _pointer(module.bias),
        module.out_features,
        module.in_features,
    )


def _linear_modules(layer: Any) -> list[Any]:
    attn, mlp = layer.self_attn, layer.mlp
    return [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]


def _norm_ok(norm: Any) -> bool:
    weight = getattr(norm, "weight", None)
    return weight is not None and weight.dtype == torch.float32 and weight.is_contiguous()


class FusedLayers:
    """A model's decoder layers as `decode_layers` structs (pointers into the model's own parameters, which
    stay referenced by the model for as long as it is loaded)."""

    def __init__(
        self, library: DecodeLayers, attention: DecodeAttention, layers: Any, dims: _Dims, max_rows: int
    ) -> None:
        self.library, self.attention = library, attention
        self._layers, self._dims = layers, dims
        # the Linear modules' own row limit: above it they run torch's sgemm, and so must a decode step (its
        # rows then get the same bits in a decode step as in a mixed one)
        self.max_rows = max_rows
        self._attend = attention.address
        self.count = len(layers)

    @classmethod
    def build(cls, library: DecodeLayers, model: Any, attention: DecodeAttention) -> FusedLayers | None:
        config = model.config
        modules = list(model.model.layers[: config.num_hidden_layers])
        structs = []
        for layer in modules:
            attn = layer.self_attn
            norms = [layer.input_layernorm, layer.post_attention_layernorm]
            per_head = [getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)]
            if not all(_norm_ok(n) for n in norms + [n for n in per_head if n is not None]):
                return None
            linears = [_linear(m) for m in _linear_modules(layer)]
            if any(linear is None for linear in linears):
                return None
            structs.append(
                _Layer(
                    *[_pointer(getattr(n, "weight", None)) for n in norms + per_head],
                    *[float(getattr(n, "variance_epsilon", 0.0)) for n in norms + per_head],
                    *linears,
                )
            )
        first = modules[0].self_attn
        dims = _Dims(
            config.hidden_size,
            first.q_proj.out_features // first.head_dim,
            first.k_proj.out_features // first.head_dim,
            first.head_dim,
            modules[0].mlp.gate_proj.out_features,
            float(first.scaling),
        )
        int8 = all(isinstance(m, Int8RowwiseLinear) for layer in modules for m in _linear_modules(layer))
        max_rows = INT8_KERNEL_MAX_ROWS if int8 else ROWWISE_MAX_ROWS
        return cls(library, attention, (_Layer * len(structs))(*structs), dims, max_rows)

    def supports(self, x: torch.Tensor, keys: list, values: list, valid: torch.Tensor) -> bool:
        """Whether this step's cache and inputs are in the layout the C loop reads."""
        if x.dtype != torch.float32 or not x.is_contiguous() or valid.dtype != torch.bool or valid.stride(1) != 1:
            return False
        if x.shape[0] > self.max_rows or len(keys) < self.count or len(values) < self.count:
            return False
        keys, values = keys[: self.count], values[: self.count]
        if any(t is None or t.dtype != torch.float32 for t in keys + values):
            return False
        d = self._dims.d
        same = all(t.stride() == keys[0].stride() for t in keys) and all(
            t.stride() == values[0].stride() for t in values
        )
        return same and keys[0].stride()[2:] == values[0].stride()[2:] == (d, 1)

    def __call__(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: list,
        values: list,
        target: tuple,
        valid: torch.Tensor,
        chunk: tuple | None = None,
    ) -> torch.Tensor:
        """x [rows, hidden] through every layer, in place; the step writes and attends as `target` says.

        `chunk` = (tokens, prefix, cache target of `target_chunk`): the last `tokens` rows of x (and of cos/sin)
        are a prompt chunk at positions [prefix, prefix + tokens) of the target's row (a mixed step); they go
        through the same Linear layers and glue, and attend causally over that row's prompt columns through the
        chunk attention kernel (decode_attention.c: each block of the row's keys read once for all its tokens).
        """
        rows = x.shape[0]
        _, _, write_col, _, first_col = target
        threads = torch.get_num_threads()  # the engine's thread tuner sets it per phase
        dims = ctypes.byref(self._dims)
        scratch = torch.empty(self.library.scratch(dims, rows), dtype=torch.float32)
        groups = self._dims.heads // self._dims.kv_heads
        k0, v0 = keys[0], values[0]
        spec, chunk_scratch = None, None
        if chunk is not None:
            tokens, prefix, (row, _, _, _, origin) = chunk
            heads, seen = self._dims.heads, prefix + tokens
            floats = self.attention.chunk_scratch_floats(tokens, heads, seen, self._dims.d, threads)
            chunk_scratch = torch.empty(floats, dtype=torch.float32)
            at_k, at_v = row * k0.stride(0) + origin * k0.stride(2), row * v0.stride(0) + origin * v0.stride(2)
            address = self.attention.chunk_address
            spec = ctypes.byref(_Chunk(tokens, prefix, at_k, at_v, address, chunk_scratch.data_ptr()))
            rows -= tokens
        cols = write_col + 1 - first_col
        attention_scratch = torch.empty(threads * self.attention.scratch_floats(groups, cols), dtype=torch.float32)
        key_pointers = (_P * self.count)(*[t.data_ptr() for t in keys[: self.count]])
        value_pointers = (_P * self.count)(*[t.data_ptr() for t in values[: self.count]])
        self.library.layers(
            self._layers,
            self.count,
            dims,
            x.data_ptr(),
            rows,
            cos.data_ptr(),
            sin.data_ptr(),
            key_pointers,
            value_pointers,
            k0.stride(0),
            k0.stride(1),
            v0.stride(0),
            v0.stride(1),
            write_col,
            first_col,
            valid.data_ptr(),
            valid.stride(0),
            self._attend,
            scratch.data_ptr(),
            attention_scratch.data_ptr(),
            threads,
            spec,
        )
        return x


def build_decode_layers(cache_dir: Path) -> DecodeLayers | None:
    """Compile (once per CPU, compiler and source) and load the library; None where that is not possible."""
    built = build_library(SOURCE, cache_dir)
    return None if built is None else DecodeLayers(*built)
