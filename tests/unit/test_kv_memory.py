"""One long generation grows the process by its own KV cache, not by a multiple of it.

The embedded model once grew the server by ~0.75 GB during one 3957-token request (its own KV: 174 MB):
the cache held four rows for one request and doubled its columns. The generation runs in a subprocess
so its peak RSS (VmHWM, reset after the warm-up) is its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

_LONG_GENERATION = """
import asyncio, gc, sys, uuid
from contextlib import aclosing
from gateway.engine.speed import bound_onednn_caches
from gateway.gc_heap import release_free_memory
bound_onednn_caches()
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from gateway.engine.batched import BatchedEngine
from gateway.engine.types import GenerationRequest, SamplingParams
from tests.unit.batched_tiny import gpt2_tokenizer

PROMPT, TOKENS, BUDGET = 30, int(sys.argv[1]), int(sys.argv[2])

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

torch.manual_seed(0)
# small weights, large KV per token (8 layers x 16 KV heads x 128 x fp32 x K and V = 128 KiB)
config = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
                     num_attention_heads=16, num_key_value_heads=16, head_dim=128, max_position_embeddings=8192)
model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()
engine = BatchedEngine(model, gpt2_tokenizer(), name="kv")

async def generate(tokens, budget):
    # greedy, no EOS: the budget is the row's lookahead; the client leaves after `tokens`
    params = SamplingParams(max_new_tokens=budget, temperature=0.0)
    request = GenerationRequest(uuid.uuid4().hex, list(range(10, 10 + PROMPT)), params)
    count = 0
    async with aclosing(engine.generate(request)) as deltas:
        async for delta in deltas:
            count += len(delta.token_ids)
            if count >= tokens:
                break
    return count

asyncio.run(generate(80, 80))  # the first forwards' kernels and allocator pools
gc.collect()
release_free_memory()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
generated = asyncio.run(generate(TOKENS, BUDGET))
peak = status("VmHWM") - before
asyncio.run(engine.close())  # the engine thread ends before the interpreter does
kv = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4 * (PROMPT + generated)
print(generated, kv, peak)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_one_long_generation_grows_by_its_kv_cache() -> None:
    # a large budget (the row's lookahead does not cap growth), 570 columns used: doubling would hold
    # 1024 (1.8x the KV)
    tokens = 540
    run = subprocess.run(
        [sys.executable, "-c", _LONG_GENERATION, str(tokens), "4000"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    generated, kv, growth = (int(x) for x in run.stdout.split()[-3:])
    assert generated == tokens
    # KV columns grow by a quarter, so up to 25% spare, plus allocator slack; the old layout (four rows,
    # doubled columns) grew by ~7x the KV here
    assert growth <= 1.25 * kv + (8 << 20), f"peak RSS grew {growth / 2**20:.1f} MiB for {kv / 2**20:.1f} MiB of KV"
