"""Beam search (num_beams > 1) in both engines equals transformers' own generate(num_beams=…), and on the
batched engine it runs between steps without disturbing the rows decoding beside it."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gateway.engine.batched import BatchedEngine
from gateway.engine.hf import HFEngine
from tests.unit.batched_tiny import collect, gather, gpt2_tokenizer, params, prompt, tiny_model

pytestmark = pytest.mark.anyio
EOS = 50256
BEAMS = {"num_beams": 5, "no_repeat_ngram_size": 2, "early_stopping": True}


def reference(ids: list[int], max_new_tokens: int, **beams: Any) -> list[int]:
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        out = tiny_model().generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=EOS,
            pad_token_id=EOS,
            **beams,
        )
    new = out[0, len(ids) :].tolist()
    return new[: new.index(EOS) + 1] if EOS in new else new


def beam_params(max_new_tokens: int) -> Any:
    return params(max_new_tokens, stop_token_ids=frozenset({EOS}), **BEAMS)


@pytest.mark.parametrize("kind", ["batched", "simple"])
async def test_beam_search_equals_transformers(kind: str) -> None:
    ids = prompt("Once upon a time, in a land far away, there lived")
    expected = reference(ids, 24, **BEAMS)
    assert expected != reference(ids, 24)  # the beams pick another continuation than greedy decoding
    if kind == "batched":
        engine: Any = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny", pad_token_id=EOS)
    else:
        engine = HFEngine(tiny_model(), gpt2_tokenizer(), name="tiny", pad_token_id=EOS)
    try:
        result = await collect(engine, ids, beam_params(24))
    finally:
        await engine.close()
    assert result.token_ids == expected
    assert result.text == gpt2_tokenizer().decode([t for t in expected if t != EOS])
    assert result.finish_reason == ("stop" if expected[-1] == EOS else "length")
    assert result.deltas == 1  # one delta at the end: beams do not stream


async def test_beam_request_beside_running_rows_leaves_them_unchanged() -> None:
    engine = BatchedEngine(tiny_model(), gpt2_tokenizer(), name="tiny", pad_token_id=EOS)
    greedy_ids = prompt("The quick brown fox")
    beam_ids = prompt("Hello")
    try:
        alone = await collect(engine, greedy_ids, params(32))
        together, beam, again = await gather(
            collect(engine, greedy_ids, params(32)),
            collect(engine, beam_ids, beam_params(16)),
            collect(engine, greedy_ids, params(32)),
        )
    finally:
        await engine.close()
    assert together.token_ids == alone.token_ids == again.token_ids
    assert beam.token_ids == reference(beam_ids, 16, **BEAMS)
    assert engine.tuner.phases["beam"].calls > 0  # the beam steps went through the thread tuner
