"""The batched engine on a tiny random Llama: per-row parameters inside a batch, stops, logprobs, seeds."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from gateway.engine.batch_support import batched_support
from gateway.engine.batched import BatchedEngine
from gateway.engine.hf import HFEngine
from gateway.errors import EngineError
from tests.unit.batched_tiny import PROMPTS, collect, gather, gpt2_tokenizer, params, prompt, tiny_model

pytestmark = pytest.mark.anyio
HOT = {"temperature": 1.5, "top_p": 0.95}


@pytest.fixture
async def engine(anyio_backend: str):
    engine = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny", max_running=16, max_queued=64)
    yield engine
    await engine.close()


@pytest.fixture
async def simple(anyio_backend: str):
    engine = HFEngine(tiny_model(), gpt2_tokenizer(), name="tiny", pad_token_id=50256)
    yield engine
    await engine.close()


def test_tiny_model_passes_the_self_check(anyio_backend: str) -> None:
    assert batched_support(tiny_model()) is None
    assert batched_support(tiny_model("eager")) is None


async def test_greedy_matches_the_per_request_engine(engine: BatchedEngine, simple: HFEngine) -> None:
    for text in PROMPTS:
        batched = await collect(engine, prompt(text), params(32))
        reference = await collect(simple, prompt(text), params(32))
        assert batched.token_ids == reference.token_ids
        assert batched.text == reference.text
        assert batched.finish_reason == reference.finish_reason == "length"


async def test_greedy_row_keeps_its_solo_text_among_hot_neighbours(engine: BatchedEngine) -> None:
    solo = [await collect(engine, prompt(text), params(40)) for text in PROMPTS]
    hot = [collect(engine, prompt(text), params(40, seed=i, **HOT)) for i, text in enumerate(PROMPTS * 2)]
    batch = await gather(*[collect(engine, prompt(text), params(40)) for text in PROMPTS], *hot)
    for alone, together in zip(solo, batch[: len(PROMPTS)], strict=True):
        assert together.token_ids == alone.token_ids
        assert together.text == alone.text
    assert any(r.token_ids != s.token_ids for r, s in zip(batch[len(PROMPTS) :], solo * 2, strict=True))


async def test_rows_join_and_leave_between_steps(engine: BatchedEngine) -> None:
    """Staggered arrivals, short and long rows, a long prompt joining a young batch: texts stay solo texts."""
    long_prompt = prompt(" ".join(["word"] * 150))
    jobs = [(prompt(PROMPTS[0]), 180), (prompt(PROMPTS[1]), 5), (long_prompt, 30), (prompt(PROMPTS[3]), 60)]
    solo = [await collect(engine, ids, params(n)) for ids, n in jobs]

    async def later(delay: float, ids: list[int], n: int):
        await asyncio.sleep(delay)
        return await collect(engine, ids, params(n))

    batch = await gather(*[later(0.01 * i, ids, n) for i, (ids, n) in enumerate(jobs)])
    for alone, together in zip(solo, batch, strict=True):
        assert together.token_ids == alone.token_ids
    assert engine.cache.rows == 0


async def test_per_request_max_tokens_and_stop_ids(engine: BatchedEngine) -> None:
    free = await collect(engine, prompt(PROMPTS[1]), params(20))
    stop_id = free.token_ids[5]
    cut = free.token_ids.index(stop_id)
    results = await gather(
        collect(engine, prompt(PROMPTS[1]), params(20, stop_token_ids=frozenset({stop_id}))),
        collect(engine, prompt(PROMPTS[1]), params(3)),
        collect(engine, prompt(PROMPTS[1]), params(20)),
        collect(engine, prompt(PROMPTS[1]), params(0)),
    )
    stopped, short, full, empty = results
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: cut + 1]  # the stop token is counted ...
    assert stopped.text == gpt2_tokenizer().decode(free.token_ids[:cut])  # ... but never shown
    assert short.finish_reason == "length" and short.token_ids == free.token_ids[:3]
    assert full.token_ids == free.token_ids and full.finish_reason == "length"
    assert empty.finish_reason == "length" and empty.token_ids == []


async def test_logprobs_per_row(engine: BatchedEngine, simple: HFEngine) -> None:
    ids = prompt(PROMPTS[0])
    with_lp, without, reference = await gather(
        collect(engine, ids, params(12, logprobs=3)),
        collect(engine, ids, params(12, **HOT, seed=1)),
        collect(simple, ids, params(12, logprobs=3)),
    )
    assert without.logprobs == []
    assert [lp.token_id for lp in with_lp.logprobs] == with_lp.token_ids
    for mine, theirs in zip(with_lp.logprobs, reference.logprobs, strict=True):
        assert mine.token == theirs.token and len(mine.top) == 3
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-4)
        assert mine.top[0][1] >= mine.top[1][1] >= mine.top[2][1]
        assert mine.logprob <= 0 and math.isclose(mine.top[0][1], mine.logprob, abs_tol=1e-5)  # greedy = top-1


async def test_prompt_logprobs(engine: BatchedEngine, simple: HFEngine) -> None:
    ids = prompt(PROMPTS[1])
    mine = await collect(engine, ids, params(2, prompt_logprobs=2, logprobs=0))
    theirs = await collect(simple, ids, params(2, prompt_logprobs=2, logprobs=0))
    assert mine.prompt_logprobs is not None and len(mine.prompt_logprobs) == len(ids)
    assert mine.prompt_logprobs[0].logprob is None
    for a, b in zip(mine.prompt_logprobs[1:], theirs.prompt_logprobs[1:], strict=True):
        assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-4)


async def test_seeded_sampling_is_reproducible_whatever_the_batch(engine: BatchedEngine) -> None:
    ids = prompt(PROMPTS[2])
    alone = await collect(engine, ids, params(30, seed=42, **HOT))
    crowd = await gather(
        collect(engine, ids, params(30, seed=42, **HOT)),
        *[collect(engine, prompt(text), params(30, seed=7, temperature=0.9)) for text in PROMPTS],
    )
    other_seed = await collect(engine, ids, params(30, seed=43, **HOT))
    assert crowd[0].token_ids == alone.token_ids
    assert other_seed.token_ids != alone.token_ids
    state = torch.random.get_rng_state()
    await collect(engine, ids, params(5, **HOT))  # unseeded: its own generator, not the global RNG
    assert torch.equal(state, torch.random.get_rng_state())


async def test_penalties_bias_and_processors_apply_to_their_row_only(engine: BatchedEngine, simple: HFEngine) -> None:
    ids = prompt(PROMPTS[0])
    base = await collect(engine, ids, params(16))
    banned = base.token_ids[0]
    seen_shapes: list[tuple] = []

    class Ban:
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            seen_shapes.append((tuple(input_ids.shape), tuple(scores.shape)))
            scores[:, banned] = float("-inf")
            return scores

    forced = base.token_ids[3]
    results = await gather(
        collect(engine, ids, params(16, logits_processors=(Ban,))),
        collect(engine, ids, params(16, logit_bias=((forced, 100.0),))),
        collect(engine, ids, params(16, repetition_penalty=3.0, frequency_penalty=2.0, presence_penalty=1.0)),
        collect(engine, ids, params(16)),
    )
    processed, biased, penalized, plain = results
    penalties = {"repetition_penalty": 3.0, "frequency_penalty": 2.0, "presence_penalty": 1.0}
    reference = await collect(simple, ids, params(16, **penalties))
    assert banned not in processed.token_ids
    assert seen_shapes[0] == ((1, len(ids)), (1, engine.vocab_size))
    assert seen_shapes[1] == ((1, len(ids) + 1), (1, engine.vocab_size))
    assert biased.token_ids == [forced] * 16
    assert penalized.token_ids == reference.token_ids  # same penalty semantics as the per-request engine
    assert plain.token_ids == base.token_ids


async def test_multibyte_text_streams_whole_characters(engine: BatchedEngine) -> None:
    tok = gpt2_tokenizer()
    ids = prompt("Emoji:")
    target = tok("🚀🚀 東京")["input_ids"]

    class Script:  # forces the continuation to `target`, one byte-level token at a time
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            step = input_ids.shape[1] - len(ids)
            forced = torch.full_like(scores, float("-inf"))
            forced[:, target[step]] = 0.0
            return forced

    result = await collect(engine, ids, params(len(target), logits_processors=(Script,)))
    assert result.token_ids == target
    assert result.text == "🚀🚀 東京"
    assert result.deltas < len(target)  # partial characters were held back, not sent as U+FFFD


async def test_abort_by_id_and_close(engine: BatchedEngine) -> None:
    ids = prompt(PROMPTS[0])
    task = asyncio.create_task(collect(engine, ids, params(5000), request_id="abort-me"))
    while engine.stats()["running"] == 0:
        await asyncio.sleep(0.01)
    await engine.abort("abort-me")
    await engine.abort("unknown-id")  # ignored
    result = await asyncio.wait_for(task, 10)
    assert result.finish_reason == "abort"
    assert len(result.token_ids) < 5000


async def test_shared_prompt_prefix_is_computed_once_and_changes_nothing(engine: BatchedEngine) -> None:
    system = prompt("You are a helpful assistant. Answer briefly and politely, in English. Question:")
    asks = [" What is 2+2?", " Name a color.", " Why is the sky blue, and why are sunsets red?", "!"]
    prompts = [system + prompt(ask) for ask in asks] + [system[:-3]]  # one ends inside the shared part
    solo = [await collect(engine, ids, params(20)) for ids in prompts]
    before = engine.shared_prefix_tokens
    together = await gather(*[collect(engine, ids, params(20, logprobs=1)) for ids in prompts])
    assert engine.shared_prefix_tokens > before  # the burst took the shared-prefix path
    for alone, batched in zip(solo, together, strict=True):
        assert batched.token_ids == alone.token_ids


async def test_a_failing_logits_processor_fails_only_its_own_request(engine: BatchedEngine) -> None:
    class Broken:
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            raise ValueError("grammar exploded")

    ids = prompt(PROMPTS[0])
    alone = await collect(engine, ids, params(12))
    results = await asyncio.gather(
        collect(engine, ids, params(12, logits_processors=(Broken,))),
        collect(engine, ids, params(12)),
        return_exceptions=True,
    )
    assert isinstance(results[0], EngineError) and "grammar exploded" in str(results[0])
    assert results[1].token_ids == alone.token_ids
    assert engine.cache.rows == 0 and engine.stats()["in_flight"] == 0
