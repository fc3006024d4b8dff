"""Which kernel a CPU model's Linear layers use, chosen at load: rowwise (fp32), oneDNN-packed, or torch's own.

The fastest one depends on the CPU more than on the model: oneDNN's packed layout was 1.5-2.5x faster
per layer than torch's sgemm on an AVX2 EPYC but slower on a Sapphire Rapids at 1-2 rows (a decode step
of SmolLM2-135M fp32: 66 ms packed vs 51 ms plain), where the rowwise kernel was fastest at 1-16 rows
(48 / 70 / 93 ms at 1 / 8 / 16 rows, packed 66 / 90 / 108). So with `linear_kernel: auto` an fp32
model measures both candidates on its own layers, in a decode step's order (each weight read from memory,
as in a real step: one layer timed in a loop stays in cache and misleads), and keeps the faster one.
16-bit models are packed (the rowwise kernel is fp32 only; oneDNN runs bf16 on AMX/AVX512-BF16).
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from gateway.engine.int8_vnni import Int8VnniLinear, build_vnni_kernel
from gateway.engine.rowwise import (
    RowwiseLinear,
    build_rowwise_kernel,
    can_use_rowwise,
    quantize_int8_rowwise,
    use_rowwise_linears,
)
from gateway.engine.speed import PackedLinear, can_prepack, prepack_linears, quantize_int8
from gateway.specs import LinearKernel

logger = logging.getLogger(__name__)

MEASURE_ROWS = (1, 8)  # a lone stream, and a busy server's decode step
MEASURE_ROUNDS = 3
MEASURE_MAX_BYTES = 2 << 30  # measuring holds a packed copy of every layer for a moment; above this, no copy


def _linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32]


def _pass_seconds(layers: list[torch.nn.Module], inputs: dict[int, torch.Tensor]) -> float:
    started = time.perf_counter()
    for layer in layers:
        layer(inputs[layer.in_features])
    return time.perf_counter() - started


def measure_layouts(model: torch.nn.Module, kernel: Any) -> dict[str, dict[int, float]]:
    """Seconds for one pass over every fp32 Linear layer, per candidate and row count (median of rounds)."""
    linears = _linears(model)
    candidates = {
        "rowwise": [RowwiseLinear(layer, kernel) for layer in linears],
        "onednn": [PackedLinear(layer) for layer in linears],
    }
    widths = {layer.in_features for layer in linears}
    seconds: dict[str, dict[int, list[float]]] = {name: {r: [] for r in MEASURE_ROWS} for name in candidates}
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for rows in MEASURE_ROWS:
            inputs = {w: torch.randn(rows, w, generator=generator) for w in widths}
            for layers in candidates.values():
                _pass_seconds(layers, inputs)  # first calls build kernels / primitives
            for _ in range(MEASURE_ROUNDS):
                for name, layers in candidates.items():
                    seconds[name][rows].append(_pass_seconds(layers, inputs))
    return {name: {r: statistics.median(v) for r, v in per.items()} for name, per in seconds.items()}


# The rowwise layout also brings the decode attention kernel and the fused decode layers (decode_layers.py),
# which the Linear layers' own times do not show: SmolLM2 fp32, one decode step at 8 rows, 70 -> 49 ms on top
# of the same layers. oneDNN has to beat rowwise by more than that to be kept; without this, a measurement on
# a busy host picked oneDNN now and then and served at half the speed (bench: 57 vs 110 tok/s at 8 streams).
ROWWISE_ADVANTAGE = 1.4


def pick_layout(seconds: dict[str, dict[int, float]]) -> str:
    """The candidate with the least total time relative to the best at each row count (rowwise's divided by
    `ROWWISE_ADVANTAGE`)."""
    best = {r: min(per[r] for per in seconds.values()) for r in MEASURE_ROWS}
    score = {name: sum(seconds[name][r] / best[r] for r in MEASURE_ROWS) for name in seconds}
    if "rowwise" in score:
        score["rowwise"] /= ROWWISE_ADVANTAGE
    return min(score, key=score.__getitem__)


def apply_linear_layout(model: Any, kernel_choice: LinearKernel, *, tied_head: bool, cache_dir: Path) -> dict:
    """Put the chosen kernel in place; returns what was done, for the model's `speed` details."""
    done: dict[str, Any] = {"linear_kernel": "torch", "linear_layers": 0}
    if kernel_choice == "torch" or not (can_prepack(model) or can_use_rowwise(model)):
        return done
    if not any(type(m) is torch.nn.Linear for m in model.modules()):  # e.g. all weight-only int8 already
        return done
    kernel = None
    if kernel_choice in ("auto", "rowwise") and can_use_rowwise(model):
        kernel = build_rowwise_kernel(cache_dir)
    choice = "onednn"
    if kernel is not None:
        choice = "rowwise"
        weights = sum(layer.weight.nbytes for layer in _linears(model))
        if kernel_choice == "auto" and can_prepack(model) and weights <= MEASURE_MAX_BYTES:
            seconds = measure_layouts(model, kernel)
            choice = pick_layout(seconds)
            done["measured_ms"] = {n: {r: round(s * 1000, 2) for r, s in per.items()} for n, per in seconds.items()}
            logger.info("Linear kernels measured (ms per pass over the layers, by rows): %s", done["measured_ms"])
    if choice == "rowwise":
        done.update(linear_kernel="rowwise", linear_layers=use_rowwise_linears(model, kernel))
    elif can_prepack(model):
        done.update(linear_kernel="onednn", linear_layers=prepack_linears(model, tied_head=tied_head))
    return done


def apply_int8(model: Any, kernel_choice: LinearKernel, *, cache_dir: Path, activations: bool = True) -> dict:
    """int8 Linear layers on the rowwise kernel where it builds (and the kernel choice allows it): with
    `activations` and AVX-512 VNNI or AVX2, activations int8 too (per 32 values: int8_vnni.py), else weight-only;
    without the kernel, torch's dynamic quantization (the MLP output projections stay fp32)."""
    kernel = build_rowwise_kernel(cache_dir) if kernel_choice in ("auto", "rowwise") else None
    if kernel is None:
        return {"int8": "dynamic", "int8_linears": quantize_int8(model)}
    vnni = build_vnni_kernel(cache_dir) if activations else None
    count = quantize_int8_rowwise(model, kernel, vnni)
    on_vnni = sum(isinstance(m, Int8VnniLinear) for m in model.modules())
    if vnni is None or not on_vnni:
        return {"int8": "weight-only", "int8_linears": count}
    # a layer whose input width is not a multiple of the block stays weight-only
    return {"int8": f"activations per 32 ({vnni.isa})", "int8_linears": count, "int8_weight_only": count - on_vnni}
