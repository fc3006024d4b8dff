"""A leaner forward for Llama-like models' decode steps and prompt chunks: transformers' math, fewer ops.

A decode step of a small model is mostly per-operation overhead, not arithmetic: SmolLM2-135M with
weight-only int8 spends ~11 ms of a ~30 ms one-row step in its Linear layers and most of the rest
in the ~40 small ops per layer of transformers' generic forward (output-capturing wrappers, kwargs
plumbing, module calls, 4-D reshapes and transposes, a mask-preprocessing pass, a
`.contiguous()` copy per layer). This forward runs the same operations in the same order on the
same tensors, so its logits are bit-identical to the model's own forward (checked when the engine
starts, before it is trusted; see `LeanPath`), minus the plumbing: SmolLM2, same process, alternated,
one decode step at 1 / 8 rows: int8 44.7 -> 33.4 / 78.0 -> 70.2 ms, fp32 83.7 -> 72.4 / 108.6 -> 101.1.

Prompt chunks of a long prompt (gateway/engine/chunked_prefill.py) take the same stack with a split
attention that needs no mask (`prefix_causal_attention`), and so do bursts of short prompts (`prefill`):
packed into one flat run of tokens instead of the model's left-padded batch, which spent a fifth of a
chat burst's prefill on padding (8 prompts of 29-50 tokens, SmolLM2 fp32: 730 -> 581 ms). vLLM gets the
same effect by writing its own model classes; here the model stays transformers' own (its weights, its
rotary embedding module, its cache interface). Which paths run is decided at start (lean_path.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from gateway.engine.decode_attention import DecodeAttention
from gateway.engine.decode_layers import DecodeLayers, FusedLayers
from gateway.engine.kvcache import BatchKVCache
from gateway.engine.rowwise import linear_into, runs_on_sgemm

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


def _rotary_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb for one tensor; in place where the temporary is fresh (the same ops,
    fewer live buffers in a chunk)."""
    half = x.shape[-1] // 2
    return (x * cos).add_(torch.cat((-x[..., half:], x[..., :half]), dim=-1).mul_(sin))


def _has_hooks(model: torch.nn.Module) -> bool:
    return hasattr(model, "hf_device_map") or any(
        m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in model.modules()
    )


def lean_support(model: Any) -> str | None:
    """None when `LeanForward` can run this model; else why not (the model's own forward is used)."""
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


def prefix_causal_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, prefix: int, scale: float
) -> torch.Tensor:
    """Attention of a prompt chunk: every query sees the `prefix` earlier columns and its own chunk causally.

    The same result as one SDPA call with the chunk x context boolean mask, computed as two maskless flash
    calls (the earlier columns in full, the chunk's own columns with is_causal) merged by their log-sum-exp.
    With a mask, torch's CPU flash kernel converts it to floats and adds it to every block of scores, and
    transformers first copies the KV heads out to the query heads (repeat_kv): at 8k tokens a chunk's
    attention took 114 ms per layer that way, 85 ms split (the flash kernel groups query heads itself).
    Shapes: query [1, heads, q, d], keys/values [1, kv_heads, prefix + q, d]; returns [1, heads, q, d].
    """
    early = flash_attention(query, keys[:, :, :prefix], values[:, :, :prefix], scale, causal=False) if prefix else None
    return split_causal_attention(query, keys[:, :, prefix:], values[:, :, prefix:], early, scale)


PACK_GQA_MAX_QUERIES = 64
# ... and any number of queries over at least this many keys: a full chunk's attention to a long prefix then runs
# on the kernel's bigger query blocks and reads each KV head once (512 queries x 9 heads, SmolLM2, 2 threads:
# 31.8 vs 36.7 ms at 7,500 keys, 23.9 vs 26.6 at 5,500, even at 3,000, 7 % slower at 1,000-2,000; same bits)
PACK_GQA_MIN_KEYS = 3072


def flash_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's CPU flash kernel: (output, log-sum-exp of the scores) for [1, heads, q, d] queries.

    Without a causal mask, for at most `PACK_GQA_MAX_QUERIES` queries or over at least `PACK_GQA_MIN_KEYS`
    keys, the query heads that share a KV head go in as one longer run of queries of that head (transformers'
    pack_gqa): the kernel then reads each KV head's keys and values once for all of them instead of once per
    query head, in bigger query blocks. A few chunk tokens over an 8k-token prefix are mostly those reads; a
    full chunk over a short prefix is compute-bound, where packing only adds a copy (every chunk packed, an 8k
    prompt alone measured 0.62x of f80dbe5, 0.59-0.65x with none: inside that run-to-run noise)."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    batch, heads, length, d = query.shape
    kv_heads = keys.shape[1]
    pack = length <= PACK_GQA_MAX_QUERIES or keys.shape[2] >= PACK_GQA_MIN_KEYS
    if causal or kv_heads == heads or batch != 1 or not pack:
        out, lse = flash(query, keys, values, 0.0, causal, scale=scale)[:2]
        return out, lse
    packed = query.reshape(1, kv_heads, heads // kv_heads * length, d)
    out, lse = flash(packed, keys, values, 0.0, False, scale=scale)[:2]
    return out.reshape(1, heads, length, d), lse.reshape(1, heads, length)


def split_causal_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, early: tuple | None, scale: float
) -> torch.Tensor:
    """`query` over its own `keys`/`values` causally, merged with `early`: its (output, log-sum-exp) over
    earlier columns in full (`flash_attention`), or None. The merge runs in place, in `early`'s output."""
    own, own_lse = flash_attention(query, keys, values, scale, causal=True)
    if early is None:
        return own
    early_out, early_lse = early
    total = torch.logaddexp(early_lse, own_lse)
    merged = early_out.mul_(torch.exp(early_lse - total)[..., None])
    return merged.add_(own.mul_(torch.exp(own_lse - total)[..., None])).to(query.dtype)


class LeanForward:
    """The decoder stack of a Llama-like model over `BatchKVCache`, for decode steps and prompt chunks.

    Tokens are flattened to rows of [tokens, hidden] for every per-token op; only attention sees the
    batch: a decode step is `rows` sequences of one token, a chunk one sequence of `q` tokens.
    """

    def __init__(self, model: Any, attention: DecodeAttention | None = None, fused: FusedLayers | None = None) -> None:
        self.model = model
        self.layers = list(model.model.layers[: model.config.num_hidden_layers])
        layer = self.layers[0].self_attn
        self.head_dim = layer.head_dim
        self.groups = layer.num_key_value_groups
        self.attention = attention  # the C kernel for decode rows' attention; None: SDPA (the model's own math)
        # decode steps' layers in one C call (decode_layers.py), with the attention kernel; then every stack
        # (chunks, mixed steps) takes its per-token ops from the same library, for the same bits
        self.fused = fused

    @property
    def glue(self) -> DecodeLayers | None:
        """The fused layers' per-token ops, which every stack uses while the fused layers run."""
        return None if self.fused is None else self.fused.library

    def decode(self, cache: BatchKVCache, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor):
        """One token per row ([rows, 1] ids); the logits of every row. Bit-identical to the model's forward
        with SDPA; with the attention kernel (`attention`), equal to rounding (see decode_attention.py)."""
        if self.fused is not None and mask.dtype == torch.bool:
            x = self._embed(input_ids[:, 0])
            valid = mask[:, 0, 0]
            if self.fused.supports(x, cache.keys, cache.values, valid):
                cos, sin = (t.contiguous() for t in self._rotary(position_ids))
                self.fused(x, cos, sin, cache.keys, cache.values, cache.target, valid)
                return self._logits(x)
        attend = self._decode_attention(cache, cache.target, input_ids.shape[0], mask)
        return self._stack(input_ids[:, 0], self._rotary(position_ids), attend)

    def chunk(self, cache: BatchKVCache, input_ids: torch.Tensor, position_ids: torch.Tensor, prefix: int):
        """The next `q` prompt tokens of the cache's pending row ([1, q] ids) after `prefix` already cached
        ones; the logits of the last token [1, vocab]. CPU only (torch's CPU flash kernel)."""
        attend = self._chunk_attention(cache, cache.target, input_ids.shape[1], prefix)
        return self._stack(input_ids[0], self._rotary(position_ids), attend, keep=slice(-1, None))

    def prefill(self, cache: BatchKVCache, prefix: list[int], suffixes: list[list[int]]) -> torch.Tensor:
        """New rows' prompts, packed: one flat run of their tokens with no padding (`cache.target` as
        `begin_prefill` set it, after `begin_shared_prefix` when `prefix` is not empty). A `prefix` that all
        the prompts start with runs once, as the first segment of the run, into the first new row; every row
        attends over those columns there (copy them to the other rows afterwards: `copy_shared_prefix`).
        Each row's last logits [n, vocab]. CPU only (torch's CPU flash kernel)."""
        r0, _, _, _, first = cache.target
        end, shared, device = cache.end, len(prefix), cache.device
        lengths = [len(suffix) for suffix in suffixes]
        bounds = list(itertools.accumulate(lengths, initial=shared))
        ids = torch.tensor(prefix + [token for suffix in suffixes for token in suffix], dtype=torch.long, device=device)
        ranges = [(0, shared)] + [(shared, shared + n) for n in lengths]  # position ids: the prefix's, each row's
        positions = torch.cat([torch.arange(a, b, device=device) for a, b in ranges])[None]

        def heads(t: torch.Tensor) -> torch.Tensor:  # [tokens, heads, d] -> [1, heads, tokens, d]
            return t.transpose(0, 1)[None]

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: int, scale: float) -> torch.Tensor:
            parts, early = [], None
            if shared:  # the prefix: causal over itself, in the first new row's columns
                target = (r0, r0 + 1, first, shared, first)
                keys, values = cache.write(target, heads(k[:shared]), heads(v[:shared]), index)
                parts.append(split_causal_attention(heads(q[:shared]), keys, values, None, scale))
                # every suffix token over the whole prefix: one call for all rows, merged into each row's own below
                early = flash_attention(heads(q[shared:]), keys, values, scale, causal=False)
            for i, n in enumerate(lengths):
                a, b, row = bounds[i], bounds[i + 1], r0 + i
                own = (row, row + 1, end - n, n, end - n)  # right-aligned to `end`, as begin_prefill lays rows out
                keys, values = cache.write(own, heads(k[a:b]), heads(v[a:b]), index)
                mine = None if early is None else tuple(t[:, :, a - shared : b - shared] for t in early)
                parts.append(split_causal_attention(heads(q[a:b]), keys, values, mine, scale))
            return torch.cat([part[0].transpose(0, 1) for part in parts]).reshape(q.shape[0], -1)

        keep = torch.tensor(bounds[1:], device=device) - 1
        return self._stack(ids, self._rotary(positions), attend, keep=keep)

    def mixed(self, cache: BatchKVCache, decode: tuple, chunk: tuple) -> torch.Tensor:
        """A decode step and a prompt chunk in one pass: every weight is read once for both.

        `decode` = (input_ids [rows, 1], position_ids, mask, cache target) as `decode` takes them, `chunk` =
        (input_ids [1, q], position_ids, prefix, cache target) as `chunk`; the targets are `cache.target`
        after `begin_decode` and after `target_chunk`. Returns [rows + 1, vocab]: each decode row's logits
        (bit-identical to `decode` where the Linear layers give a row the same result in any batch, e.g. the
        rowwise kernel within its row limit) and then the chunk's last token's. With the fused layers the chunk
        rides in their C loop (its attention: the chunk kernel, each block of the prompt's keys read once for all
        its tokens), else the Python stack runs both.
        """
        decode_ids, decode_positions, mask, decode_target = decode
        chunk_ids, chunk_positions, prefix, chunk_target = chunk
        rows, size = decode_ids.shape[0], chunk_ids.shape[1]
        # each part's rotary on its own, as `decode` and `chunk` compute it (same bits for the decode rows)
        (cos_d, sin_d), (cos_c, sin_c) = self._rotary(decode_positions), self._rotary(chunk_positions)
        cos, sin = torch.cat([cos_d, cos_c]), torch.cat([sin_d, sin_c])
        ids = torch.cat([decode_ids[:, 0], chunk_ids[0]])
        keep = torch.arange(rows + 1, device=ids.device)
        keep[-1] = rows + size - 1
        if self.fused is not None and mask.dtype == torch.bool:
            # the fused layers carry the chunk: the Python stack's per-op overhead was most of what a mixed step
            # cost beyond the decode step early in a prompt, and its flash kernel is slower than the chunk
            # kernel on a few tokens late in one (SmolLM2 fp32, 4 tokens over 7,000 columns, 30 layers: 28 vs 42
            # ms); an 8k prompt beside a stream took 124 s with the Python stack past 16k token x column pairs,
            # 83 s fused throughout, and the stream's gap p95 went from 2.8x to 1.7x its normal
            x = self._embed(ids)
            valid = mask[:, 0, 0]
            if self.fused.supports(x, cache.keys, cache.values, valid):
                spec = (size, prefix, chunk_target)
                self.fused(x, cos, sin, cache.keys, cache.values, decode_target, valid, chunk=spec)
                return self._logits(x[keep])
        to_rows = self._decode_attention(cache, decode_target, rows, mask)
        to_chunk = self._chunk_attention(cache, chunk_target, size, prefix)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: int, scale: float) -> torch.Tensor:
            first = to_rows(q[:rows], k[:rows], v[:rows], index, scale)
            return torch.cat([first, to_chunk(q[rows:], k[rows:], v[rows:], index, scale)])

        return self._stack(ids, (cos, sin), attend, keep=keep)

    def _decode_attention(self, cache: BatchKVCache, target: tuple, rows: int, mask: torch.Tensor) -> Any:
        kernel = self.attention if mask.dtype == torch.bool else None
        valid = mask[:, 0, 0]  # [rows, window]: the columns each row may see
        if kernel is None and mask.dtype == torch.bool:
            # SDPA turns a boolean mask into this additive one (0 / -inf) in every call: once per step instead
            # of once per layer (same bits; 8 rows x 100 columns, 2 threads: 167 -> 91 us per layer)
            dtype = self.model.model.embed_tokens.weight.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: int, scale: float) -> torch.Tensor:
            keys, values = cache.write(target, k[:, :, None], v[:, :, None], index)
            if kernel is not None and kernel.supports(q, keys, values, valid):
                return kernel(q, keys, values, valid, scale)
            # one query per row: its heads grouped by KV head (transformers' pack_gqa), the mask shared
            grouped = q.view(rows, keys.shape[1], self.groups, self.head_dim)
            out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scale)
            return out.reshape(rows, -1)

        return attend

    def _chunk_attention(self, cache: BatchKVCache, target: tuple, tokens: int, prefix: int) -> Any:
        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: int, scale: float) -> torch.Tensor:
            keys, values = cache.write(target, k.transpose(0, 1)[None], v.transpose(0, 1)[None], index)
            out = prefix_causal_attention(q.transpose(0, 1)[None], keys, values, prefix, scale)
            return out[0].transpose(0, 1).reshape(tokens, -1)

        return attend

    def _rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [tokens, 1, head_dim] (broadcast over heads) from the model's own rotary module."""
        inner = self.model.model
        cos, sin = inner.rotary_emb(inner.embed_tokens.weight[:1], position_ids)  # uses only dtype and device
        tokens = position_ids.numel()
        return cos.reshape(tokens, 1, -1), sin.reshape(tokens, 1, -1)

    def _stack(self, ids: torch.Tensor, rotary: tuple, attend: Any, keep: Any = None) -> torch.Tensor:
        """The layers over flat tokens; logits of the `keep` tokens (index or slice; default all)."""
        x = self._embed(ids)
        tokens = x.shape[0]
        cos, sin = rotary
        glue = self.glue
        norm, rotate = (_rms_norm, _rotary_embedding) if glue is None else (glue.rms_norm, glue.rotary)
        if glue is not None:
            cos, sin = cos.contiguous(), sin.contiguous()
        # A prompt chunk's activations are > 256 KiB: while a long prompt is prefilled, glibc maps and faults in
        # each fresh one anew (gc_heap.MallocThresholds), ~13 MB a layer at 512 tokens. So the ones the glue and
        # sgemm can write into are one buffer per kind for the whole call, rewritten by every layer.
        buffers: dict[str, torch.Tensor] = {}

        def buffer(kind: str, width: int) -> torch.Tensor:
            if kind not in buffers:
                buffers[kind] = torch.empty(tokens, width, dtype=x.dtype, device=x.device)
            return buffers[kind]

        def project(linear: torch.nn.Module, h: torch.Tensor, kind: str) -> torch.Tensor:
            if runs_on_sgemm(linear, h):
                return linear_into(linear, h, buffer(kind, linear.weight.shape[0]))
            return linear.forward(h)

        def normed(layer_norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:  # into the hidden-width buffer
            return norm(layer_norm, x) if glue is None else glue.rms_norm(layer_norm, x, buffer("hidden", x.shape[1]))

        for index, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = normed(layer.input_layernorm, x)
            q = project(attn.q_proj, h, "q").view(tokens, -1, self.head_dim)
            k = project(attn.k_proj, h, "k").view(tokens, -1, self.head_dim)
            v = project(attn.v_proj, h, "v").view(tokens, -1, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head
                q, k = norm(attn.q_norm, q), norm(attn.k_norm, k)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            # residuals in place (same bits as `x + ...`); h is spent, so its buffer takes o_proj's output, then
            # the second norm's, then (once gate and up have read it) down_proj's
            x = x.add_(project(attn.o_proj, attend(q, k, v, index, attn.scaling), "hidden"))
            h = normed(layer.post_attention_layernorm, x)
            mlp = layer.mlp
            gate, up = project(mlp.gate_proj, h, "gate"), project(mlp.up_proj, h, "up")
            if glue is None:
                gate = F.silu(gate, inplace=True).mul_(up)
            else:
                gate = glue.silu_mul(gate, up)
            x = x.add_(project(mlp.down_proj, gate, "hidden"))
        return self._logits(x if keep is None else x[keep])

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """[tokens] ids -> [tokens, hidden]: the model's own embedding."""
        embed = self.model.model.embed_tokens
        return F.embedding(ids, embed.weight, embed.padding_idx)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm and the output layer over [tokens, hidden]."""
        return self.model.lm_head.forward(_rms_norm(self.model.model.norm, x))
