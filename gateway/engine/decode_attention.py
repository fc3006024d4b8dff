"""Attention of a decode step over each row's own cached tokens: a small C kernel (decode_attention.c).

Why by hand: the batch's rows share the cache's columns (gateway/engine/kvcache.py), so the window of
a decode step is as wide as its longest row, and torch's SDPA attends over every column of it, masked
or not. With one 3,000-token row among eight ~100-token ones, every row paid for 3,000 columns: an int8
SmolLM2 step took 190 ms with SDPA, 89 ms with this kernel, which reads only the columns a row may
see (same machine, alternated; 8 rows of ~100 tokens: 51.5 -> 47.7 ms). Each KV head's keys and values
are read once for all the query heads that share them (grouped-query attention), and a row's result
does not depend on the other rows or on the masked columns around it.

Its float results differ from SDPA's by rounding (summation order, its own exp): up to ~1e-6 in the
attention output, ~5e-5 in SmolLM2's logits. `LeanPath` compares it with SDPA when the engine starts and
keeps SDPA when they disagree by more than `AGREEMENT` of the logits' scale. fp32 caches on CPU only.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from gateway.engine.native import build_library

SOURCE = Path(__file__).with_name("decode_attention.c")
AGREEMENT = 1e-4  # largest logit difference vs SDPA at the start check, relative to the largest logit


class DecodeAttention:
    """`attention(q, keys, values, valid, scale)`: q [rows, heads, d] contiguous; keys/values [rows, kv_heads,
    cols, d] views of the cache (rows and heads strided, a column's d values contiguous); valid [rows, cols]
    bool (the columns each row may attend to). Returns [rows, heads * d]."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        pointer, integer, long = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        self._attend = library.decode_attention_f32
        self._attend.argtypes = [pointer] * 6 + [integer] * 5 + [long] * 5 + [ctypes.c_float, integer]
        self._attend.restype = None
        self._scratch = library.decode_attention_scratch
        self._scratch.argtypes = [integer, integer]
        self._scratch.restype = long
        self._chunk = library.chunk_attention_f32
        self._chunk.argtypes = [pointer] * 5 + [integer] * 5 + [long] * 2 + [ctypes.c_float, integer]
        self._chunk.restype = None
        self._chunk_scratch = library.chunk_attention_scratch
        self._chunk_scratch.argtypes = [integer] * 5
        self._chunk_scratch.restype = long

    @property
    def address(self) -> int:
        """The C function `decode_attention_f32`, for other native code to call (decode_layers.c)."""
        return ctypes.cast(self._attend, ctypes.c_void_p).value or 0

    @property
    def chunk_address(self) -> int:
        """The C function `chunk_attention_f32` (a prompt chunk's causal attention), for decode_layers.c."""
        return ctypes.cast(self._chunk, ctypes.c_void_p).value or 0

    def chunk_scratch_floats(self, tokens: int, heads: int, cols: int, d: int, threads: int) -> int:
        """Floats of scratch `chunk_attention_f32` needs (all threads together)."""
        return self._chunk_scratch(tokens, heads, cols, d, threads)

    def scratch_floats(self, groups: int, cols: int) -> int:
        """Floats of scratch one thread needs for `groups` query heads per KV head over `cols` columns."""
        return self._scratch(groups, cols)

    @staticmethod
    def supports(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> bool:
        """Layouts and dtypes the kernel reads (anything else keeps SDPA)."""
        d = q.shape[-1]
        return (
            q.device.type == keys.device.type == "cpu"
            and q.dtype == keys.dtype == values.dtype == torch.float32
            and valid.dtype == torch.bool
            and q.is_contiguous()
            and q.shape[1] % keys.shape[1] == 0
            and keys.stride(3) == values.stride(3) == valid.stride(1) == 1
            and keys.stride(2) == values.stride(2) == d
        )

    def __call__(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, scale: float
    ) -> torch.Tensor:
        rows, heads, d = q.shape
        kv_heads, cols = keys.shape[1], keys.shape[2]
        threads = torch.get_num_threads()  # the engine's thread tuner sets it per phase
        out = torch.empty(rows, heads * d, dtype=q.dtype)
        scratch = torch.empty(threads * self.scratch_floats(heads // kv_heads, cols), dtype=torch.float32)
        self._attend(  # ctypes releases the GIL for the call, as a torch op would
            q.data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            valid.data_ptr(),
            out.data_ptr(),
            scratch.data_ptr(),
            rows,
            heads,
            kv_heads,
            cols,
            d,
            keys.stride(0),
            keys.stride(1),
            values.stride(0),
            values.stride(1),
            valid.stride(0),
            scale,
            threads,
        )
        return out

    def chunk(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, prefix: int, scale: float
    ) -> torch.Tensor:
        """A prompt chunk's attention over one cache row, causal: q [tokens, heads, d] contiguous (token t at
        position prefix + t), keys/values [kv_heads, prefix + tokens, d] (heads strided, columns d apart).
        Returns [tokens, heads * d]. The fused layers call the same function for mixed steps."""
        tokens, heads, d = q.shape
        threads = torch.get_num_threads()
        out = torch.empty(tokens, heads * d, dtype=q.dtype)
        scratch = torch.empty(
            self.chunk_scratch_floats(tokens, heads, prefix + tokens, d, threads), dtype=torch.float32
        )
        self._chunk(
            q.data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            out.data_ptr(),
            scratch.data_ptr(),
            tokens,
            prefix,
            heads,
            keys.shape[0],
            d,
            keys.stride(0),
            values.stride(0),
            scale,
            threads,
        )
        return out


def build_decode_attention(cache_dir: Path) -> DecodeAttention | None:
    """Compile (once per CPU, compiler and source) and load the kernel; None where that is not possible."""
    built = build_library(SOURCE, cache_dir)
    return None if built is None else DecodeAttention(*built)
