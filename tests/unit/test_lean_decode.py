"""The lean decode step gives the model's own logits bit for bit, or is not used.

Tiny random models of every architecture the lean step claims (GQA and not, q/k/v biases, per-head
q/k norms), on torch's Linear, the rowwise kernel and its weight-only int8 layers; rows of different
lengths, masked holes, a row leaving mid-way. Then the guard: an unsupported model or a lean step that
disagrees with the model's forward falls back to the forward, and the engine runs verified.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from gateway.engine import lean_decode
from gateway.engine.batched import BatchedEngine
from gateway.engine.kvcache import BatchKVCache, forward_last_logits
from gateway.engine.lean_decode import DecodeForward, LeanDecoder, lean_support
from gateway.engine.rowwise import build_rowwise_kernel, quantize_int8_rowwise, use_rowwise_linears
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
    lean = LeanDecoder(model)
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
            got = lean(cache, ids, positions, mask)  # first: the model's forward then rewrites the column
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


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Any:
    built = build_rowwise_kernel(tmp_path_factory.mktemp("kernels"))
    if built is None:
        pytest.skip("no C compiler with OpenMP on this machine")
    return built


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
    forward = DecodeForward(gpt2, BatchKVCache(1, torch.device("cpu")), lambda *args: calls.append(args) or "full")
    assert forward.path == "model" and forward(1, 2, 3) == "full" and calls == [(1, 2, 3)]
    not_allowed = DecodeForward(tiny_model(), BatchKVCache(2, torch.device("cpu")), lambda *a: None, allowed=False)
    assert not_allowed.path == "model"


async def test_a_lean_step_that_disagrees_is_dropped_and_its_step_keeps_the_model_logits(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """A transformers release that changed a layer would make the first step differ: the engine falls back."""
    model = tiny_model()
    reference = BatchedEngine(model, gpt2_tokenizer(), name="reference", lean_decode=False)
    try:
        expected = [await collect(reference, prompt(text), params(12)) for text in PROMPTS[:3]]
    finally:
        await reference.close()
    assert reference.decode_forward.path == "model"

    monkeypatch.setattr(lean_decode, "_rotate_half", lambda x: torch.cat((x[..., 1:], x[..., :1]), dim=-1))
    engine = BatchedEngine(model, gpt2_tokenizer(), name="changed")
    try:
        assert engine.decode_forward.path == "lean"
        got = [await collect(engine, prompt(text), params(12)) for text in PROMPTS[:3]]
    finally:
        await engine.close()
    assert engine.decode_forward.path == "model" and not engine.decode_forward.verified
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]


async def test_the_engine_decodes_on_the_verified_lean_step_with_the_same_tokens(anyio_backend: str) -> None:
    model = tiny_model()
    outputs = {}
    for lean in (False, True):
        engine = BatchedEngine(model, gpt2_tokenizer(), name=f"lean-{lean}", lean_decode=lean)
        try:
            hot = {"temperature": 1.1, "seed": 5, "logprobs": 3}
            results = [await collect(engine, prompt(text), params(20, **hot)) for text in PROMPTS]
        finally:
            await engine.close()
        assert engine.decode_forward.path == ("lean" if lean else "model")
        assert engine.decode_forward.verified is lean
        outputs[lean] = [(r.token_ids, [(lp.token_id, lp.logprob, lp.top) for lp in r.logprobs]) for r in results]
    assert outputs[True] == outputs[False]
