"""The lean forward gives the model's own logits (decode: bit for bit; prompt chunks: to rounding), or is not used.

Tiny random models of every architecture the lean stack claims (GQA and not, q/k/v biases, per-head
q/k norms), on torch's Linear, the rowwise kernel and its weight-only int8 layers; rows of different
lengths, masked holes, a row leaving mid-way; a long prompt in chunks with decode steps between them.
Then the guard: an unsupported model or a lean step that disagrees with the model's forward falls back
to the forward, and the engine runs the checked lean stack.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import torch

from gateway.engine import lean_forward, lean_path
from gateway.engine.batched import BatchedEngine
from gateway.engine.kvcache import BatchKVCache, forward_last_logits
from gateway.engine.lean_forward import LeanForward, lean_support, prefix_causal_attention
from gateway.engine.lean_path import LeanPath
from gateway.engine.rowwise import (
    ROWWISE_MAX_ROWS,
    RowwiseLinear,
    linear_into,
    quantize_int8_rowwise,
    runs_on_sgemm,
    use_rowwise_linears,
)
from tests.unit.batched_tiny import PROMPTS, collect, gpt2_tokenizer, params, prompt, tiny_model

pytestmark = pytest.mark.anyio

VOCAB = 320
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=512,
    initializer_range=0.3,
)


def build(architecture: str, **overrides: Any) -> Any:
    import transformers

    config_class = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    model_class = getattr(transformers, architecture)
    torch.manual_seed(7)
    config = config_class(**{**COMMON, **overrides})
    return model_class._from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()


MODELS = {
    "llama-gqa": lambda: build("LlamaForCausalLM", num_key_value_heads=2),
    "llama-mha-bias": lambda: build("LlamaForCausalLM", num_key_value_heads=4, attention_bias=True, mlp_bias=True),
    "llama3-rope": lambda: build(
        "LlamaForCausalLM",
        num_key_value_heads=2,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "mistral": lambda: build("MistralForCausalLM", num_key_value_heads=2, sliding_window=None, head_dim=16),
    "qwen2": lambda: build("Qwen2ForCausalLM", num_key_value_heads=2, use_sliding_window=False),
    "qwen3": lambda: build("Qwen3ForCausalLM", num_key_value_heads=2, head_dim=32, use_sliding_window=False),
}


def steps_both_ways(model: Any, steps: int = 5) -> None:
    """Prefill three rows of different lengths, then decode: lean and model forward on the same cache."""
    cache = BatchKVCache(model.config.num_hidden_layers, torch.device("cpu"))
    lean = LeanForward(model)
    lengths = [5, 11, 2]
    generator = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        positions, mask = cache.begin_prefill(lengths)
        ids = torch.randint(0, VOCAB, (3, max(lengths)), generator=generator)
        forward_last_logits(model, cache, ids, positions, mask, None)
        cache.end_prefill(lengths)
        cache.lookahead = steps + 1
        for step in range(steps):
            cache.tokens[: cache.rows] = torch.randint(0, VOCAB, (cache.rows,), generator=generator)
            ids, positions, mask = cache.begin_decode()
            got = lean.decode(cache, ids, positions, mask)  # first: the model's forward then rewrites the column
            expected = forward_last_logits(model, cache, ids, positions, mask, None)
            cache.end_decode()
            assert torch.equal(got, expected), f"step {step}: max diff {(got - expected).abs().max()}"
            if step == 2:
                cache.remove_row(0)  # the last row moves into its place


@pytest.mark.parametrize("name", list(MODELS))
def test_lean_step_matches_the_model_forward_bit_for_bit(name: str, anyio_backend: str) -> None:
    model = MODELS[name]()
    assert lean_support(model) is None
    steps_both_ways(model)


@pytest.mark.parametrize("prefix, size", [(0, 7), (5, 1), (23, 9), (40, 40), (100, 70), (3100, 70)])
def test_split_attention_equals_one_masked_call(prefix: int, size: int, anyio_backend: str) -> None:
    """(100, 70): too many queries to pack for so few keys; (3100, 70): packed again (PACK_GQA_MIN_KEYS)."""
    generator = torch.Generator().manual_seed(prefix + size)
    query = torch.randn(1, 6, size, 16, generator=generator)
    keys, values = (torch.randn(1, 2, prefix + size, 16, generator=generator) for _ in range(2))
    rows = torch.arange(prefix, prefix + size)[:, None]
    mask = (torch.arange(prefix + size)[None, :] <= rows)[None, None]
    expected = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=True)
    got = prefix_causal_attention(query, keys, values, prefix, 16**-0.5)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_lean_chunks_match_the_model_forward_with_decode_steps_between(name: str, anyio_backend: str) -> None:
    """A 45-token prompt in chunks of 16 in the pending row while another row decodes: as the model's forward."""
    model = MODELS[name]()
    generator = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, VOCAB, (1, 45), generator=generator)
    results = {}
    for lean in (False, True):
        cache = BatchKVCache(model.config.num_hidden_layers, torch.device("cpu"))
        stack = LeanForward(model)
        with torch.inference_mode():
            positions, mask = cache.begin_prefill([6])
            forward_last_logits(model, cache, prompt[:, :6] + 1, positions, mask, None)
            cache.end_prefill([6])
            cache.lookahead = 8
            cache.begin_pending(45)
            chunks, done = [], 0
            while done < 45:
                size = min(16, 45 - done)
                positions, mask = cache.target_chunk(done, size)
                ids = prompt[:, done : done + size]
                if lean:
                    chunks.append(stack.chunk(cache, ids, positions, done))
                else:
                    chunks.append(forward_last_logits(model, cache, ids, positions, mask, None))
                done += size
                ids, positions, mask = cache.begin_decode()  # the other row goes on between chunks
                forward_last_logits(model, cache, ids, positions, mask, None)
                cache.end_decode()
            cache.end_pending(45)
            cache.tokens[:2] = torch.tensor([3, 4])
            ids, positions, mask = cache.begin_decode()
            after = forward_last_logits(model, cache, ids, positions, mask, None)
        results[lean] = (chunks, after)
    for got, expected in zip(results[True][0], results[False][0], strict=True):
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()
    assert torch.allclose(results[True][1], results[False][1], atol=1e-5, rtol=1e-4)  # the KV it wrote


def test_linear_into_a_given_tensor_has_f_linears_bits(kernel: Any, anyio_backend: str) -> None:
    torch.manual_seed(11)
    x = torch.randn(ROWWISE_MAX_ROWS + 8, 64)
    for bias in (True, False):
        plain = torch.nn.Linear(64, 48, bias=bias)
        rowwise = RowwiseLinear(copy.deepcopy(plain), kernel)
        assert not runs_on_sgemm(plain, x)  # its weight requires grad and autograd is on: out= cannot record
        with torch.inference_mode():  # as the engine runs
            for layer in (plain, rowwise):
                assert runs_on_sgemm(layer, x)
                out = torch.full((x.shape[0], 48), float("nan"))
                assert linear_into(layer, x, out) is out
                assert torch.equal(out, torch.nn.functional.linear(x, plain.weight, plain.bias))
            assert not runs_on_sgemm(rowwise, x[:ROWWISE_MAX_ROWS])  # its own kernel there, into its own tensor


def test_a_chunks_layers_rewrite_the_same_activation_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long prompt's chunks run while glibc maps every activation > 256 KiB afresh (gc_heap.py): the
    projections of all layers write into one buffer per kind, not a new tensor per layer."""
    model = MODELS["llama-mha-bias"]()
    written: dict[int, set[int]] = {}
    into = lean_forward.linear_into

    def spy(layer: Any, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        written.setdefault(out.shape[1], set()).add(out.data_ptr())
        return into(layer, x, out)

    monkeypatch.setattr(lean_forward, "linear_into", spy)
    cache = BatchKVCache(model.config.num_hidden_layers, torch.device("cpu"))
    with torch.inference_mode():
        cache.begin_pending(40)
        positions, _ = cache.target_chunk(0, 40)
        logits = LeanForward(model).chunk(cache, torch.randint(0, VOCAB, (1, 40)), positions, 0)
    assert torch.isfinite(logits).all()
    # q/k/v/o and down (hidden width 64), gate and up (96): each width's buffers, whatever the layer count
    assert {width: len(pointers) for width, pointers in written.items()} == {64: 4, 96: 2}


@pytest.mark.parametrize("layers", ["rowwise", "int8"])
def test_lean_step_matches_on_the_rowwise_kernel_layers(layers: str, kernel: Any, anyio_backend: str) -> None:
    model = MODELS["llama-gqa"]()
    (use_rowwise_linears if layers == "rowwise" else quantize_int8_rowwise)(model, kernel)
    assert lean_support(model) is None
    steps_both_ways(model)


def test_models_it_does_not_know_keep_their_own_forward(anyio_backend: str) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)).eval()
    assert lean_support(gpt2) == "architecture GPT2LMHeadModel"
    assert "attention implementation" in lean_support(tiny_model(attn="eager"))
    gelu = copy.deepcopy(tiny_model())
    gelu.config.hidden_act = "gelu"
    assert lean_support(gelu) == "activation 'gelu'"
    hooked = copy.deepcopy(tiny_model())
    hooked.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert lean_support(hooked).startswith("module hooks")

    calls = []
    forward = LeanPath(gpt2, BatchKVCache(1, torch.device("cpu")), lambda *args: calls.append(args) or "full")
    assert forward.path == "model" and forward.decode(1, 2, 3) == "full" and calls == [(1, 2, 3)]
    not_allowed = LeanPath(tiny_model(), BatchKVCache(2, torch.device("cpu")), lambda *a: None, allowed=False)
    assert not_allowed.path == "model"


async def test_a_lean_stack_that_disagrees_is_off_from_the_start(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """A transformers release that changed a layer would fail the check at start: the engine keeps the forward."""
    model = tiny_model()
    reference = BatchedEngine(model, gpt2_tokenizer(), name="reference", lean=False)
    try:
        expected = [await collect(reference, prompt(text), params(12)) for text in PROMPTS[:3]]
    finally:
        await reference.close()
    assert reference.lean.path == "model"

    wrong_half = lambda x: torch.cat((x[..., 1:], x[..., :1]), dim=-1)  # noqa: E731 - a rotation by one lane
    monkeypatch.setattr(lean_forward, "_rotary_embedding", lambda x, cos, sin: x * cos + wrong_half(x) * sin)
    engine = BatchedEngine(model, gpt2_tokenizer(), name="changed")
    try:
        assert engine.lean.path == "model"  # the check at start caught it
        got = [await collect(engine, prompt(text), params(12)) for text in PROMPTS[:3]]
    finally:
        await engine.close()
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]


async def test_the_engine_decodes_on_the_verified_lean_step_with_the_same_tokens(anyio_backend: str) -> None:
    model = tiny_model()
    outputs = {}
    for lean in (False, True):
        engine = BatchedEngine(model, gpt2_tokenizer(), name=f"lean-{lean}", lean=lean)
        try:
            hot = {"temperature": 1.1, "seed": 5, "logprobs": 3}
            results = [await collect(engine, prompt(text), params(20, **hot)) for text in PROMPTS]
        finally:
            await engine.close()
        assert engine.lean.path == ("lean" if lean else "model")
        outputs[lean] = [(r.token_ids, [(lp.token_id, lp.logprob, lp.top) for lp in r.logprobs]) for r in results]
    assert outputs[True] == outputs[False]


async def test_long_prompts_prefill_through_lean_chunks_with_the_same_tokens(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    chunk_calls = []  # the prefix of each chunk: alone (`chunk`) or with the other row's decode step (`mixed`)
    alone, mixed = LeanForward.chunk, LeanForward.mixed
    monkeypatch.setattr(LeanForward, "chunk", lambda self, *args: chunk_calls.append(args[-1]) or alone(self, *args))
    monkeypatch.setattr(LeanForward, "mixed", lambda self, *args: chunk_calls.append(args[-1][2]) or mixed(self, *args))
    model = tiny_model()
    long_prompt = prompt(" ".join(PROMPTS) * 3)
    outputs = {}
    for lean in (False, True):
        engine = BatchedEngine(model, gpt2_tokenizer(), name=f"chunks-{lean}", lean=lean, prefill_chunk_tokens=16)
        try:
            results = await asyncio.gather(
                collect(engine, long_prompt, params(16, logprobs=2)), collect(engine, prompt(PROMPTS[1]), params(40))
            )
        finally:
            await engine.close()
        assert engine.chunking.chunks >= len(long_prompt) // 16
        outputs[lean] = results
    # each chunk after the tokens already in the cache: 16 alone, then with the short request's decode steps
    assert chunk_calls[:2] == [0, 16] and chunk_calls == sorted(set(chunk_calls)), chunk_calls
    for got, want in zip(outputs[True], outputs[False], strict=True):
        assert got.token_ids == want.token_ids
        assert [t.logprob for t in got.logprobs] == pytest.approx([t.logprob for t in want.logprobs], abs=1e-4)


def test_a_check_that_raises_keeps_the_model_forward(monkeypatch: pytest.MonkeyPatch, anyio_backend: str) -> None:
    def broken(*args: Any) -> bool:
        raise RuntimeError("unexpected shape")

    monkeypatch.setattr(lean_path, "matches_model_forward", broken)
    path = LeanPath(tiny_model(), BatchKVCache(2, torch.device("cpu")), lambda *args: "full")
    assert path.path == "model" and path.decode(1, 2, 3) == "full"


def test_many_queries_over_a_long_prefix_go_in_packed_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """A full chunk over PACK_GQA_MIN_KEYS keys or more: its query heads go in as one run per KV head."""
    generator = torch.Generator().manual_seed(3)
    query = torch.randn(70, 6, 16, generator=generator).transpose(0, 1)[None]  # as the stack passes it: a view
    keys, values = (torch.randn(1, 2, lean_forward.PACK_GQA_MIN_KEYS, 16, generator=generator) for _ in range(2))
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    shapes = []

    def spy(q: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(q.shape))
        return flash(q, *args, **kwargs)

    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", spy)
    packed = lean_forward.flash_attention(query, keys, values, 0.25, causal=False)
    monkeypatch.setattr(lean_forward, "PACK_GQA_MIN_KEYS", 10**9)
    plain = lean_forward.flash_attention(query, keys, values, 0.25, causal=False)
    assert shapes == [(1, 2, 3 * 70, 16), (1, 6, 70, 16)]
    torch.testing.assert_close(packed[0], plain[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(packed[1], plain[1], atol=1e-6, rtol=1e-6)
