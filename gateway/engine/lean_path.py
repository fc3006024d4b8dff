"""The engine's choice of forward for decode steps, prompt chunks and packed prefill, checked when it starts.

The lean stack (lean_forward.py) must give the model's own decode logits bit for bit; the C attention
kernel (decode_attention.py) and the fused decode layers (decode_layers.py) must agree with it within
`AGREEMENT` of the logits' scale, each on the same probe step. Anything that fails its check, or whose
check raises, is simply not used: the model still loads, on the slower path.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from gateway.engine.batch_support import probe_step
from gateway.engine.decode_attention import AGREEMENT, DecodeAttention
from gateway.engine.decode_layers import DecodeLayers, FusedLayers
from gateway.engine.int8_vnni import fp32_activations
from gateway.engine.kvcache import BatchKVCache, forward_last_logits
from gateway.engine.lean_forward import Forward, LeanForward, lean_support
from gateway.engine.rowwise import row_invariant_rows

logger = logging.getLogger(__name__)


def matches_model_forward(model: Any, lean: LeanForward) -> bool:
    """A decode step of two rows (different prompt lengths: a masked hole) through both: identical logits?"""
    cache = BatchKVCache(model.config.num_hidden_layers, next(model.parameters()).device)
    with torch.inference_mode():
        _, (ids, positions, mask) = probe_step(model, cache, _model_forward)
        got = lean.decode(cache, ids, positions, mask)  # first: the model's forward then rewrites the column
        expected = _model_forward(model, cache, ids, positions, mask)
    if torch.equal(got, expected):
        return True
    logger.warning(
        "lean forward: logits differ from the model's forward by up to %.3g", float((got - expected).abs().max())
    )
    return False


def attention_agrees(model: Any, lean: LeanForward, attention: DecodeAttention) -> bool:
    """The same probe decode step with SDPA and with the C attention kernel: logits within `AGREEMENT`?"""
    cache = BatchKVCache(model.config.num_hidden_layers, next(model.parameters()).device)
    with torch.inference_mode():
        _, (ids, positions, mask) = probe_step(model, cache, _model_forward)
        expected = lean.decode(cache, ids, positions, mask)
        got = LeanForward(model, attention).decode(cache, ids, positions, mask)
    difference = float((got - expected).abs().max())
    if difference <= AGREEMENT * max(1.0, float(expected.abs().max())):
        return True
    logger.warning("decode attention kernel: logits differ from SDPA's by up to %.3g", difference)
    return False


def fused_agrees(model: Any, lean: LeanForward, fused: FusedLayers) -> bool:
    """The probe decode step through the torch stack (with `lean`'s attention) and through the fused C layers:
    logits within `AGREEMENT`?"""
    cache = BatchKVCache(model.config.num_hidden_layers, next(model.parameters()).device)
    with torch.inference_mode():
        _, (ids, positions, mask) = probe_step(model, cache, _model_forward)
        expected = lean.decode(cache, ids, positions, mask)
        got = LeanForward(model, lean.attention, fused).decode(cache, ids, positions, mask)
    difference = float((got - expected).abs().max())
    if difference <= AGREEMENT * max(1.0, float(expected.abs().max())):
        return True
    logger.warning("fused decode layers: logits differ from the torch stack's by up to %.3g", difference)
    return False


def _model_forward(model: Any, cache: BatchKVCache, ids, positions, mask) -> torch.Tensor:
    return forward_last_logits(model, cache, ids, positions, mask, None)  # sdpa (lean_support): boolean masks


class LeanPath:
    """The engine's forwards for decode steps and prompt chunks: lean where it gives the model's own math.

    Checked once when the engine starts (`matches_model_forward`): a transformers release that changed a
    layer's math turns the lean stack off instead of changing outputs. Prompt chunks take it on CPU, with
    the split attention of `prefix_causal_attention` (equal to the masked one up to float rounding).
    Decode rows attend through the C kernel of decode_attention.py when one is given and its logits agree
    with SDPA's at the start (`attention_agrees`), in decode and mixed steps alike.
    """

    def __init__(
        self,
        model: Any,
        cache: BatchKVCache,
        full: Forward,
        *,
        allowed: bool = True,
        attention: DecodeAttention | None = None,
        layers: DecodeLayers | None = None,
    ) -> None:
        self.cache = cache
        self.full = full
        name = getattr(model.config, "name_or_path", type(model).__name__)
        reason = lean_support(model) if allowed else "not allowed (compiled forward)"
        self.lean: LeanForward | None = LeanForward(model) if reason is None else None
        self.attention = "sdpa"  # the decode rows' attention: "sdpa", "kernel" (decode_attention.py) or "model"
        try:
            if self.lean is not None and not matches_model_forward(model, self.lean):
                reason, self.lean = "its logits differ from the model's forward", None
        except Exception as exc:  # noqa: BLE001 - the check must never keep the model from loading
            reason, self.lean = f"its check failed ({type(exc).__name__}: {exc})", None
        self.decode_layers = "torch"  # decode steps' layers: "torch" (module by module), "fused" (decode_layers.py)
        if self.lean is not None:
            # the kernels are compared with fp32 activations in int8 layers: rounding them to int8 turns float
            # rounding differences into ~1 % of the logits (the checks' tolerance is 1e-4)
            with fp32_activations(model):
                self._check_kernels(model, attention, layers)
        if self.decode_layers == "fused":  # the stack checked above, built again with the layers' own functions
            self.lean.fused = layers.stack(model, self.lean.attention)
        if self.lean is None:
            self.attention = "model"
        self.on_cpu = next(model.parameters()).device.type == "cpu"
        # rows a mixed forward may hold with each decode row's logits as in a decode step alone
        self.row_limit = row_invariant_rows(model)
        if reason is None:
            logger.info(
                "lean forward on for %s (matched the model's forward bit for bit), decode attention: %s, layers: %s",
                name,
                self.attention,
                self.decode_layers,
            )
        else:
            logger.info("lean forward off for %s: %s", name, reason)

    def _check_kernels(self, model: Any, attention: DecodeAttention | None, layers: DecodeLayers | None) -> None:
        if attention is not None:
            try:
                if attention_agrees(model, self.lean, attention):
                    self.lean.attention, self.attention = attention, "kernel"
            except Exception:  # noqa: BLE001 - nor may the kernel's: SDPA stays
                logger.exception("decode attention kernel check failed; SDPA stays")
        if self.lean.attention is not None and layers is not None:
            try:
                fused = layers.stack(model, self.lean.attention)
                if fused is not None and fused_agrees(model, self.lean, fused):
                    self.decode_layers = "fused"
            except Exception:  # noqa: BLE001 - the torch stack stays
                logger.exception("fused decode layers check failed; the torch stack stays")

    @property
    def path(self) -> str:
        return "lean" if self.lean is not None else "model"

    @property
    def mixes(self) -> bool:
        """The lean stack on CPU: a decode step and a prompt chunk can share one forward (`mixed`), and short
        prompts are prefilled packed (`prefill`)."""
        return self.lean is not None and self.on_cpu

    def prefill(self, prefix: list[int], suffixes: list[list[int]]) -> torch.Tensor:
        """Short prompts packed into one lean forward (`LeanForward.prefill`); only where `mixes`."""
        assert self.lean is not None
        return self.lean.prefill(self.cache, prefix, suffixes)

    def mixed(self, decode: tuple, chunk: tuple) -> torch.Tensor:
        assert self.lean is not None
        return self.lean.mixed(self.cache, decode, chunk)

    def decode(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.lean is None:
            return self.full(input_ids, position_ids, mask)
        return self.lean.decode(self.cache, input_ids, position_ids, mask)

    def chunk(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor, prefix: int
    ) -> torch.Tensor:
        """A chunk of the pending row's prompt after `prefix` cached tokens (`mask` for the model's forward)."""
        if self.lean is not None and self.on_cpu:
            return self.lean.chunk(self.cache, input_ids, position_ids, prefix)
        return self.full(input_ids, position_ids, mask)
