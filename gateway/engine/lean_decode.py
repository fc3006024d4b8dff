"""A leaner decode step for Llama-like models: transformers' math, a third fewer operations.

A decode step of a small model is mostly per-operation overhead, not arithmetic: SmolLM2-135M with
weight-only int8 spends ~11 ms of a ~30 ms one-row step in its Linear layers and most of the rest
in the ~40 small ops per layer of transformers' generic forward (output-capturing wrappers, kwargs
plumbing, module calls, 4-D reshapes and transposes, a mask-preprocessing pass, a
`.contiguous()` copy per layer). This forward runs the same operations in the same order on the
same tensors, so its logits are bit-identical to the model's own forward (checked on a real step
before it is trusted; see `DecodeForward`), minus the plumbing: SmolLM2, same process, alternated,
one decode step at 1 / 8 rows: int8 44.7 -> 33.4 / 78.0 -> 70.2 ms, fp32 83.7 -> 72.4 / 108.6 -> 101.1.

Only decode steps (one new token per row) take this path; prefill keeps the model's forward, whose
large matmuls dwarf the overhead. vLLM gets the same effect by writing its own model classes; here
the model stays transformers' own (its weights, its rotary embedding module, its cache interface).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from gateway.engine.kvcache import BatchKVCache

logger = logging.getLogger(__name__)

# Architectures whose decoder layer is exactly: RMSNorm -> q/k/v (optional per-head q/k RMSNorm) ->
# rotary -> sdpa -> o_proj -> residual -> RMSNorm -> down(silu(gate) * up) -> residual.
LEAN_ARCHITECTURES = {
    "LlamaForCausalLM": ("LlamaRMSNorm", "LlamaAttention", "LlamaMLP"),
    "MistralForCausalLM": ("MistralRMSNorm", "MistralAttention", "MistralMLP"),
    "Qwen2ForCausalLM": ("Qwen2RMSNorm", "Qwen2Attention", "Qwen2MLP"),
    "Qwen3ForCausalLM": ("Qwen3RMSNorm", "Qwen3Attention", "Qwen3MLP"),
}

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, position_ids, mask)


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm's result. In fp32, F.rms_norm (one op, same bits); else its own formula."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
    hidden = x.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * hidden.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _has_hooks(model: torch.nn.Module) -> bool:
    return hasattr(model, "hf_device_map") or any(
        m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in model.modules()
    )


def lean_support(model: Any) -> str | None:
    """None when `LeanDecoder` can run this model; else why not (the model's own forward is used)."""
    architecture = type(model).__name__
    classes = LEAN_ARCHITECTURES.get(architecture)
    if classes is None:
        return f"architecture {architecture}"
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attention implementation {getattr(config, '_attn_implementation', None)!r}"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {getattr(config, 'hidden_act', None)!r}"
    norm, attention, mlp = classes
    for layer in model.model.layers:
        kinds = (type(layer.input_layernorm).__name__, type(layer.self_attn).__name__, type(layer.mlp).__name__)
        if kinds != (norm, attention, mlp) or type(layer.post_attention_layernorm).__name__ != norm:
            return f"layer modules {kinds}"
    if _has_hooks(model):
        return "module hooks (device map or accelerate offload)"
    return None


class LeanDecoder:
    """One decode step over `BatchKVCache` (rows of one new token each); logits of every row."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.layers = list(model.model.layers[: model.config.num_hidden_layers])
        attention = self.layers[0].self_attn
        self.head_dim = attention.head_dim
        self.groups = attention.num_key_value_groups

    def __call__(self, cache: BatchKVCache, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor):
        inner = self.model.model
        x = F.embedding(input_ids[:, 0], inner.embed_tokens.weight, inner.embed_tokens.padding_idx)  # [rows, hidden]
        rows = x.shape[0]
        cos, sin = inner.rotary_emb(x, position_ids)  # [rows, 1, head_dim]: broadcasts over heads
        for index, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = _rms_norm(layer.input_layernorm, x)
            q = attn.q_proj.forward(h).view(rows, -1, self.head_dim)
            k = attn.k_proj.forward(h).view(rows, -1, self.head_dim)
            v = attn.v_proj.forward(h).view(rows, -1, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head
                q, k = _rms_norm(attn.q_norm, q), _rms_norm(attn.k_norm, k)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            keys, values = cache.update(k[:, :, None], v[:, :, None], index)
            # one query per row: its heads grouped by KV head (transformers' pack_gqa), the mask shared
            out = F.scaled_dot_product_attention(
                q.view(rows, keys.shape[1], self.groups, self.head_dim),
                keys,
                values,
                attn_mask=mask,
                scale=attn.scaling,
            )
            x = x + attn.o_proj.forward(out.reshape(rows, -1))
            h = _rms_norm(layer.post_attention_layernorm, x)
            mlp = layer.mlp
            x = x + mlp.down_proj.forward(F.silu(mlp.gate_proj.forward(h)) * mlp.up_proj.forward(h))
        return self.model.lm_head.forward(_rms_norm(inner.norm, x))


class DecodeForward:
    """The decode step's forward: the lean one where it gives the model's own logits, bit for bit.

    The first step runs both on the same inputs (the lean one first: the model's own then rewrites the
    step's KV column with its values) and keeps the lean one only if the logits are identical, so a
    transformers release that changes a layer's math turns it off instead of changing outputs.
    """

    def __init__(self, model: Any, cache: BatchKVCache, full: Forward, *, allowed: bool = True) -> None:
        self.cache = cache
        self.full = full
        reason = lean_support(model) if allowed else "not allowed (compiled forward)"
        self.lean: LeanDecoder | None = LeanDecoder(model) if reason is None else None
        self.verified = False
        self.name = getattr(model.config, "name_or_path", type(model).__name__)
        if reason is not None:
            logger.debug("lean decode off for %s: %s", self.name, reason)

    @property
    def path(self) -> str:
        return "lean" if self.lean is not None else "model"

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.lean is None:
            return self.full(input_ids, position_ids, mask)
        if self.verified:
            return self.lean(self.cache, input_ids, position_ids, mask)
        got = self.lean(self.cache, input_ids, position_ids, mask)
        expected = self.full(input_ids, position_ids, mask)
        if torch.equal(got, expected):
            self.verified = True
            logger.info("lean decode on for %s: its first step matched the model's forward bit for bit", self.name)
        else:
            diff = float((got.float() - expected.float()).abs().max())
            logger.warning(
                "lean decode off for %s: its logits differ from the model's forward (max %.3g)", self.name, diff
            )
            self.lean = None
        return expected
