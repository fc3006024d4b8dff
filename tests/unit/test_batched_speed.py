"""CPU speed options (pre-packed Linear layers, int8) and the engine choice per model."""

from __future__ import annotations

import time

import pytest
import torch

from gateway.engine import speed
from gateway.engine.batch_support import batched_support
from gateway.engine.factory import build_engine
from gateway.engine.speed import INT8_SKIP, PackedLinear, can_prepack, output_vocab_size, prepack_linears, quantize_int8
from gateway.engine.threads import EXPLORE_MAX_WORK, ThreadTuner
from gateway.settings import ModelSpec
from tests.unit.batched_tiny import gpt2_tokenizer, tiny_model

pytestmark = pytest.mark.anyio


def fresh_tiny(**overrides):
    from transformers import AutoModelForCausalLM

    base = tiny_model()
    config = base.config.__class__(**{**base.config.to_dict(), **overrides})
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()
    model.load_state_dict(base.state_dict(), strict=False)
    return model


def test_prepacked_linears_keep_the_math_and_are_batch_invariant(anyio_backend: str) -> None:
    model = fresh_tiny(tie_word_embeddings=True)
    ids = torch.randint(0, 1000, (4, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(ids).logits
        assert can_prepack(model)
        packed = prepack_linears(model)
        after = model(ids).logits
        hidden = model.model(ids).last_hidden_state
        alone = torch.cat([model.model(ids[i : i + 1]).last_hidden_state for i in range(4)])
    assert packed == 2 * 7 + 1  # every Linear of the two layers, and the small tied lm_head (held twice)
    assert isinstance(model.get_output_embeddings(), PackedLinear)
    assert type(model.get_input_embeddings()) is torch.nn.Embedding  # lookups keep the unpacked table
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)
    assert torch.equal(hidden, alone)  # through packed layers a row does not depend on its neighbours
    assert isinstance(model.model.layers[0].mlp.down_proj, PackedLinear)
    assert output_vocab_size(model) == len(gpt2_tokenizer())
    assert batched_support(model) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out_features, in_features", [(576, 576), (1536, 576), (576, 1536), (192, 576)])
def test_a_lone_row_is_computed_as_it_would_be_in_any_batch(
    out_features: int, in_features: int, dtype: torch.dtype, anyio_backend: str
) -> None:
    """SmolLM2's layer shapes: a decode step of one row gives that row what a batch of 2-16 would (oneDNN on a
    Sapphire Rapids rounded the lone [576 x 1536] row differently; PackedLinear measures it and pads)."""
    layer = PackedLinear(torch.nn.Linear(in_features, out_features).to(dtype))
    rows = torch.randn(16, 1, in_features, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.inference_mode():
        alone = layer(rows[:1])
        for batch in (2, 3, 8, 16):
            assert torch.equal(layer(rows[:batch])[:1], alone), f"{batch} rows"


def test_a_large_tied_fp32_head_stays_unpacked(monkeypatch: pytest.MonkeyPatch, anyio_backend: str) -> None:
    monkeypatch.setattr(speed, "TIED_HEAD_PACK_MAX_BYTES", 0)  # the tiny table counts as large
    model = fresh_tiny(tie_word_embeddings=True)
    assert prepack_linears(model) == 2 * 7
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    monkeypatch.undo()
    model = fresh_tiny(tie_word_embeddings=True)
    assert prepack_linears(model, tied_head=False) == 2 * 7  # prepack_tied_head: false (tight memory)
    assert type(model.get_output_embeddings()) is torch.nn.Linear


def test_int8_quantizes_all_but_the_mlp_output_projection(anyio_backend: str) -> None:
    model = fresh_tiny()
    quantized = quantize_int8(model)
    prepack_linears(model)
    assert quantized == 2 * 6 + 1  # q, k, v, o, gate, up per layer + lm_head
    assert INT8_SKIP[0] == "down_proj" and isinstance(model.model.layers[1].mlp.down_proj, PackedLinear)
    assert type(model.lm_head).__module__.startswith("torch.ao.nn.quantized")
    assert output_vocab_size(model) == len(gpt2_tokenizer())
    assert batched_support(model) is None  # int8 moves logits a little; the layout check still passes


async def test_engine_choice_per_model(anyio_backend: str) -> None:
    tok = gpt2_tokenizer()
    spec = ModelSpec(name="tiny", source="x", max_running=3, max_queued=5)
    engine, kind = build_engine(spec, tiny_model(), tok, pad_token_id=50256)
    assert kind == "batched" and engine.admission.capacity == 8
    await engine.close()
    sliding = fresh_tiny(layer_types=["sliding_attention", "full_attention"], sliding_window=16)
    engine, kind = build_engine(spec, sliding, tok, pad_token_id=50256)
    assert kind == "simple" and engine.admission.capacity == 1 + 5  # one at a time, the rest queued
    await engine.close()
    with pytest.raises(ValueError, match="engine=batched"):
        build_engine(spec.model_copy(update={"engine": "batched"}), sliding, tok, pad_token_id=50256)
    engine, kind = build_engine(spec.model_copy(update={"engine": "simple"}), tiny_model(), tok, pad_token_id=50256)
    assert kind == "simple"
    await engine.close()


def test_thread_tuner_prefers_the_faster_count_and_still_explores(anyio_backend: str) -> None:
    tuner = ThreadTuner(candidates=[1, 2])
    cost = {1: 0.002, 2: 0.001}
    used = []

    def step() -> None:
        n = torch.get_num_threads()
        used.append(n)
        time.sleep(cost[n])

    initial = torch.get_num_threads()
    for _ in range(200):
        tuner.run("decode", 1, step)
    tuner.restore()
    assert torch.get_num_threads() == initial
    late = used[50:]
    assert late.count(2) > 0.85 * len(late)  # exploits the faster setting ...
    assert late.count(1) >= 1  # ... and re-tries the other now and then


def test_thread_tuner_recovers_soon_after_a_busy_moment(anyio_backend: str) -> None:
    """Learned while another process held a core (1 thread faster), then the machine is quiet again: a
    re-try measures the other count afresh instead of mixing one new time into stale ones."""
    tuner = ThreadTuner(candidates=[1, 2])
    cost = {1: 0.001, 2: 0.004}
    used = []

    def step() -> None:
        used.append(torch.get_num_threads())
        time.sleep(cost[used[-1]])

    for _ in range(300):  # long enough for a full window of (soon stale) 2-thread times
        tuner.run("decode", 1, step)
    assert used[-20:].count(1) > 15
    cost = {1: 0.002, 2: 0.001}
    used.clear()
    for _ in range(200):
        tuner.run("decode", 1, step)
    tuner.restore()
    late = used[60:]
    assert late.count(2) > 0.85 * len(late), f"2 threads in {late.count(2)} of the last {len(late)} steps"


def _tune(tuner: ThreadTuner, cost: dict[int, float], calls: int) -> list[int]:
    """`calls` decode steps that take cost[threads] (synthetic times: no sleeping); the counts picked."""
    used = []
    for _ in range(calls):
        n = tuner.choose("decode", 1)
        tuner.record("decode", n, cost[n], 1)
        used.append(n)
    return used


def test_thread_tuner_tries_the_slower_count_ever_more_rarely_while_nothing_changes() -> None:
    """Each trial costs a few slow steps: 1 thread every ~26 steps cost a busy server ~5 % of its tokens."""
    tuner = ThreadTuner(candidates=[1, 2])
    used = _tune(tuner, {1: 1.6, 2: 1.0}, 3000)
    late = used[1000:]
    assert 1 <= late.count(1) <= 0.01 * len(late), f"1 thread in {late.count(1)} of {len(late)} steps"


def test_thread_tuner_tries_again_soon_when_the_chosen_count_slows_down() -> None:
    """After backing off, a drift of the chosen count's own time (another process took a core) brings the
    next trial forward: the other count is found faster within a few dozen steps, not hundreds."""
    tuner = ThreadTuner(candidates=[1, 2])
    _tune(tuner, {1: 1.6, 2: 1.0}, 2000)
    used = _tune(tuner, {1: 1.0, 2: 1.7}, 400)
    assert used[50:].count(1) > 0.95 * len(used[50:]), f"switched after {used.index(1)} steps"


def test_thread_tuner_never_tries_a_candidate_out_on_a_large_call(anyio_backend: str) -> None:
    """A burst's prefill on the slower thread count would delay every request in the burst."""
    tuner = ThreadTuner(candidates=[1, 2])
    cost = {1: 0.005, 2: 0.001}  # far apart: a loaded machine does not flip the order
    used = []

    def prefill() -> None:
        used.append(torch.get_num_threads())
        time.sleep(cost[used[-1]])

    tuner.run("prefill", EXPLORE_MAX_WORK * 8, prefill)
    assert used == [2]  # nothing measured yet: torch's own setting, not the 1-thread trial
    for _ in range(100):  # small prompts measure both candidates and keep re-trying the slower one
        tuner.run("prefill", 10, prefill)
    assert used.count(1) > 3
    used.clear()
    for _ in range(200):
        tuner.run("prefill", EXPLORE_MAX_WORK * 8, prefill)
    tuner.restore()
    assert used == [2] * 200


def test_triton_is_hidden_on_a_cpu_only_machine() -> None:
    """xgrammar installs triton; on CPU it would only cost RSS once torch._dynamo imports it."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from gateway.engine.loader import hide_triton_without_gpu\n"
        "hide_triton_without_gpu()\n"
        "import torch._dynamo\n"
        "from torch.utils._triton import has_triton_package\n"
        "print(has_triton_package(), torch.cuda.is_available())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    hidden, gpu = out.stdout.split()
    assert hidden == str(gpu == "True")


_PRIMITIVE_GROWTH = """
import gc, sys, psutil, torch
from gateway.engine.speed import PackedLinear, bound_onednn_caches
from gateway.gc_heap import release_free_memory
if sys.argv[1] == "bounded":
    bound_onednn_caches()
layer = PackedLinear(torch.nn.Linear(576, 1536))
def rss():
    gc.collect(); release_free_memory()
    return psutil.Process().memory_info().rss
with torch.inference_mode():
    layer(torch.randn(1, 576))
    for rows in range(2, 80):  # every prefill of a new length builds a primitive for its row count
        layer(torch.randn(rows, 576))
    middle = rss()
    for rows in range(80, 160):
        layer(torch.randn(rows, 576))
print((rss() - middle) / 2**20)
"""


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
def test_onednn_primitive_caches_are_bounded() -> None:
    """Once the caches are full, new row counts cost no memory; without the bound each costs ~0.6 MiB."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}

    def growth(mode: str) -> float:
        run = subprocess.run(
            [sys.executable, "-c", _PRIMITIVE_GROWTH, mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
            env=env,
        )
        return float(run.stdout.split()[-1])

    bounded, unbounded = growth("bounded"), growth("default")
    assert bounded < 4, f"RSS grew {bounded:.1f} MiB over 80 more row counts with bounded caches"
    assert unbounded > 20, unbounded  # the bound is what keeps it flat
