"""Can the batched engine run this model? Static checks, then a tiny forward compared with a plain one.

The batched engine drives the model's own forward with a shared-column KV cache, explicit position
ids and a 4-D attention mask. That holds for decoder-only models whose layers all use full attention
through sdpa or eager attention. Sliding-window, linear-attention (SSM) and hybrid layers would need
per-layer masks and caches, so those models fall back to the per-request engine.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from gateway.engine.kvcache import BatchKVCache, attention_mask_dtype, forward_last_logits

logger = logging.getLogger(__name__)


def _static_reason(model: Any) -> str | None:
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    text = config.get_text_config(decoder=True)
    if text is not config:
        return "multimodal wrapper config"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return f"attention implementation {getattr(config, '_attn_implementation', None)!r}"
    layer_types = getattr(text, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        return f"layer types {sorted(set(layer_types))}"
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return "sliding-window attention"
    if not hasattr(text, "num_hidden_layers"):
        return "no num_hidden_layers in the config"
    return None


def _plain_last_logits(model: Any, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()


def _forward(model: Any, cache: BatchKVCache, ids, positions, mask) -> torch.Tensor:
    """The batched engine's own forward (kvcache.forward_last_logits), in float32 for comparing."""
    return forward_last_logits(model, cache, ids, positions, mask, attention_mask_dtype(model)).float()


def probe_prompts(vocab: int) -> tuple[list[list[int]], list[int]]:
    """Two prompts of different lengths (the shorter one left-padded: a masked hole) and a next token each."""
    return [[(7 * i + 3) % vocab for i in range(6)], [(11 * i + 5) % vocab for i in range(3)]], [13 % vocab, 17 % vocab]


def probe_step(model: Any, cache: BatchKVCache, forward: Any) -> tuple[torch.Tensor, tuple]:
    """Prefill the probe prompts into `cache` with `forward(model, cache, ids, positions, mask)`, then lay out
    one decode step of their next tokens: (the prefill logits, (ids, positions, mask) of that step)."""
    prompts, nxt = probe_prompts(int(model.config.get_text_config(decoder=True).vocab_size))
    lengths = [len(p) for p in prompts]
    positions, mask = cache.begin_prefill(lengths)
    ids = torch.tensor([[0] * (max(lengths) - len(p)) + p for p in prompts], device=cache.device)
    first = forward(model, cache, ids, positions, mask)
    cache.end_prefill(lengths)
    cache.tokens[:2] = torch.tensor(nxt, device=cache.device)
    return first, cache.begin_decode()


def batched_support(model: Any) -> str | None:
    """None when the batched engine gives this model the same logits as a plain forward; else why not."""
    reason = _static_reason(model)
    if reason is not None:
        return reason
    device = next(model.parameters()).device
    if device.type != "cpu":
        return None  # the check below runs on CPU tensors; GPU models pass on the static checks
    prompts, nxt = probe_prompts(int(model.config.get_text_config(decoder=True).vocab_size))
    try:
        with torch.inference_mode():
            cache = BatchKVCache(model.config.num_hidden_layers, device)
            first, (ids, positions, mask) = probe_step(model, cache, _forward)
            second = _forward(model, cache, ids, positions, mask)
            cache.end_decode()
            expected = [
                _plain_last_logits(model, prompts[0]),
                _plain_last_logits(model, prompts[1]),
                _plain_last_logits(model, prompts[0] + [nxt[0]]),
                _plain_last_logits(model, prompts[1] + [nxt[1]]),
            ]
    except Exception as exc:  # the forward does not take our cache, mask or position ids
        logger.debug("batched self-check failed", exc_info=True)
        return f"self-check forward failed: {type(exc).__name__}: {exc}"
    got = [first[0], first[1], second[0], second[1]]
    # Dynamic int8 quantization scales activations per matmul input, so a row's logits move with its
    # batch neighbours: there only a broken layout (cosine far below 1) counts as a failure.
    quantized = any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())
    for a, b in zip(got, expected, strict=True):
        scale = float(b.abs().max()) + 1.0
        close = float((a - b).abs().max()) <= 0.05 * scale
        if not close and not (quantized and float(torch.cosine_similarity(a, b, dim=0)) >= 0.9):
            return "self-check logits differ from a plain forward"
    return None
