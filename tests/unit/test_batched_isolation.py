"""One request's failure stays in that request: the rest of the batch finishes exactly as it would alone.

Faults are injected through the seam production uses for grammars (SamplingParams.logits_processors):
a processor factory that raises when the row joins, or a processor that raises a few steps in.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from gateway.engine.batched import BatchedEngine
from gateway.engine.hf import HFEngine
from gateway.engine.logits import LOGPROB_FLOOR, prompt_logprobs
from gateway.errors import EngineError
from tests.unit.batched_tiny import PROMPTS, collect, gpt2_tokenizer, params, prompt, tiny_model

pytestmark = pytest.mark.anyio


def failing_factory():
    raise RuntimeError("Overflow when unpacking long long")  # what torch said for an out-of-range seed


class FailsAtStep:
    """A logits processor that works for `steps` calls, then raises (a grammar matcher gone wrong)."""

    def __init__(self, steps: int = 3) -> None:
        self.left = steps

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.left -= 1
        if self.left < 0:
            raise ValueError("processor failed mid-stream")
        return scores


@pytest.fixture
async def engine(anyio_backend: str):
    engine = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny", max_running=8, max_queued=16)
    yield engine
    await engine.close()


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"logits_processors": (failing_factory,)}, id="sampling-state-fails-on-join"),
        pytest.param({"logits_processors": (FailsAtStep,)}, id="processor-fails-mid-stream"),
        pytest.param({"prompt_logprobs": 10**6}, id="prompt-logprobs-fail"),  # top-k beyond the vocabulary
    ],
)
async def test_four_streams_and_one_more_complete_while_one_row_fails(engine: BatchedEngine, fault: dict) -> None:
    ids = [prompt(PROMPTS[i]) for i in range(5)]
    hot = {"temperature": 1.2, "seed": 7}
    alone = [await collect(engine, ids[i], params(40, **hot)) for i in range(5)]
    steps_before = engine.steps
    results = await asyncio.gather(
        *[collect(engine, ids[i], params(40, **hot)) for i in range(5)],
        collect(engine, ids[0], params(40, **hot, **fault)),
        return_exceptions=True,
    )
    assert isinstance(results[5], EngineError)
    for solo, batched in zip(alone, results[:5], strict=True):
        assert not isinstance(batched, BaseException), batched
        assert batched.finish_reason == "length" and batched.token_ids == solo.token_ids
    assert engine.steps - steps_before < 2 * 40  # the five really ran together
    assert engine.cache.rows == 0 and engine.stats() == {"running": 0, "waiting": 0, "in_flight": 0}
    after = await collect(engine, ids[0], params(40, **hot))  # and the engine goes on as before
    assert after.token_ids == alone[0].token_ids


async def test_seeds_torch_cannot_take_are_reduced_not_fatal(engine: BatchedEngine) -> None:
    ids = prompt(PROMPTS[1])
    big = await collect(engine, ids, params(8, temperature=1.0, seed=2**64 + 5))
    same = await collect(engine, ids, params(8, temperature=1.0, seed=5))
    negative = await collect(engine, ids, params(8, temperature=1.0, seed=-(2**70)))
    assert big.token_ids == same.token_ids and big.finish_reason == "length"
    assert negative.finish_reason == "length"


async def test_simple_engine_fails_only_the_failing_request(anyio_backend: str) -> None:
    engine = HFEngine(tiny_model(), gpt2_tokenizer(), name="tiny", pad_token_id=50256)
    try:
        ids = prompt(PROMPTS[0])
        results = await asyncio.gather(
            collect(engine, ids, params(6, logits_processors=(FailsAtStep,))),
            collect(engine, ids, params(6)),
            return_exceptions=True,
        )
        assert isinstance(results[0], EngineError)
        assert results[1].finish_reason == "length" and len(results[1].token_ids) == 6
    finally:
        await engine.close()


def _reference_prompt_logprobs(logits: torch.Tensor, prompt_ids: list[int], k: int) -> list:
    """The former implementation (one forward, the whole prompt × vocab at once), kept as the oracle."""
    logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    targets = torch.tensor(prompt_ids[1:])
    chosen = logprobs.gather(1, targets[:, None])[:, 0]
    top_values, top_indices = torch.topk(logprobs, k, dim=-1) if k > 0 else (None, None)
    out = []
    for pos in range(len(prompt_ids) - 1):
        top = []
        if top_values is not None:
            top = [
                (int(i), max(float(v), LOGPROB_FLOOR)) for v, i in zip(top_values[pos], top_indices[pos], strict=True)
            ]
        out.append((max(float(chosen[pos]), LOGPROB_FLOOR), top))
    return out


@pytest.mark.parametrize(("k", "chunk"), [(0, 7), (5, 16), (3, 1000)])
def test_chunked_prompt_logprobs_equal_one_full_forward(k: int, chunk: int) -> None:
    model = tiny_model()
    ids = prompt(" ".join(PROMPTS) * 2)
    assert len(ids) > 2 * 16
    with torch.inference_mode():
        expected = _reference_prompt_logprobs(model(input_ids=torch.tensor([ids]), use_cache=False).logits, ids, k)
        got = prompt_logprobs(model, ids, k, chunk=chunk)
    assert len(got) == len(expected) == len(ids) - 1
    for (lp, top), (ref_lp, ref_top) in zip(got, expected, strict=True):
        assert lp == pytest.approx(ref_lp, abs=1e-4)
        assert [t for t, _ in top] == [t for t, _ in ref_top]
        assert [v for _, v in top] == pytest.approx([v for _, v in ref_top], abs=1e-4)
