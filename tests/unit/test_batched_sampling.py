"""The vectorized per-row sampler and the incremental detokenizer, against transformers' own pieces."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gateway.engine.detok import IncrementalDetokenizer
from gateway.engine.sampling import RowSampling, _warp, sample
from gateway.engine.types import SamplingParams
from tests.unit.batched_tiny import gpt2_tokenizer

VOCAB = 300


def row(**kwargs) -> RowSampling:
    prompt_len = kwargs.pop("prompt_len", 2)
    params = SamplingParams(max_new_tokens=8, **kwargs)
    return RowSampling.build(params, prompt_len=prompt_len, vocab_size=VOCAB, device=torch.device("cpu"))


def peaked_logits(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, VOCAB, generator=generator) * 3


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "min_p"),
    [(0.7, 0, 1.0, 0.0), (1.0, 20, 1.0, 0.0), (1.0, 0, 0.8, 0.0), (1.3, 0, 1.0, 0.1), (0.9, 40, 0.9, 0.05)],
)
def test_warpers_match_transformers_row_by_row(temperature: float, top_k: int, top_p: float, min_p: float) -> None:
    logits = peaked_logits(3)
    rows = [
        row(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p),
        row(temperature=1.0),  # a neighbour with nothing to warp
        row(temperature=0.5, top_k=5, top_p=0.5),
    ]
    warped = _warp(logits.clone(), rows)
    for i, r in enumerate(rows):
        expected = logits[i : i + 1].clone()
        chain = [TemperatureLogitsWarper(r.temperature)] if r.temperature != 1.0 else []
        chain += [TopKLogitsWarper(r.top_k)] if r.top_k else []
        chain += [TopPLogitsWarper(r.top_p)] if r.top_p < 1.0 else []
        chain += [MinPLogitsWarper(r.min_p)] if r.min_p > 0.0 else []
        for warper in chain:
            expected = warper(torch.zeros(1, 1, dtype=torch.long), expected)
        assert torch.equal(torch.isinf(warped[i]), torch.isinf(expected[0]))
        finite = ~torch.isinf(expected[0])
        assert torch.allclose(warped[i][finite], expected[0][finite])


def test_greedy_and_top_k_1_pick_the_argmax_after_penalties() -> None:
    logits = torch.zeros(3, VOCAB)
    logits[:, 7], logits[:, 8] = 10.0, 9.5
    rows = [row(temperature=0.0), row(temperature=0.0, presence_penalty=1.0), row(top_k=1, temperature=1.3)]
    history = [[1, 2, 7], [1, 2, 7], [1, 2]]  # prompt [1, 2], then 7 was generated
    result = sample(logits, rows, lambda i: history[i])
    assert result.token_list == [7, 8, 7]
    assert result.logprobs == [None, None, None]


def test_penalties_leave_the_callers_logits_unless_it_hands_them_over() -> None:
    logits = torch.zeros(2, VOCAB)
    logits[:, 7], logits[:, 8] = 10.0, 9.5
    rows = [row(temperature=0.0, presence_penalty=1.0), row(temperature=0.0)]
    history = [[1, 2, 7], [1, 2, 7]]
    kept = logits.clone()
    assert sample(logits, rows, lambda i: history[i]).token_list == [8, 7]
    assert torch.equal(logits, kept)
    assert sample(logits, rows, lambda i: history[i], overwrite=True).token_list == [8, 7]  # the engine's case
    assert logits[0, 7] == 9.0 and torch.equal(logits[1], kept[1])  # the penalized row, in place


def test_repetition_penalties_of_many_rows_get_transformers_own_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The penalty starting most chains (the embedded model's default) runs for all rows at once; every
    row's scores stay what its own chain of transformers processors gives, bit for bit."""
    logits = peaked_logits(6, seed=3)
    rows = [
        row(temperature=0.0, repetition_penalty=1.1),
        row(temperature=0.0, repetition_penalty=1.3),  # another value: its own pass
        row(temperature=0.0, repetition_penalty=1.1, presence_penalty=0.5),  # the rest of its chain runs after
        row(temperature=0.0),  # no processors
        row(temperature=0.0, repetition_penalty=1.1),
        row(temperature=0.0, repetition_penalty=1.1, logit_bias=((8, 2.0),)),
    ]
    # repeated ids, negative and positive scores, an id past the head's outputs (not penalised)
    history = [[1, 2, 2, 7, 299], [5, 9, 5], [1, 2, 7, 7], [3], [4, VOCAB + 5, 8], [8, 8, 1]]
    expected = logits.clone()
    for i, r in enumerate(rows):
        out = expected[i : i + 1]
        for processor in r.processors:
            out = processor(torch.tensor([history[i]]), out)
        expected[i : i + 1] = out
    scores = logits.clone()
    row_by_row = []
    monkeypatch.setattr(RepetitionPenaltyLogitsProcessor, "__call__", lambda *args: row_by_row.append(args))
    result = sample(scores, rows, lambda i: history[i], overwrite=True)  # processes `scores` in place
    assert row_by_row == []  # one pass per penalty value instead
    assert torch.equal(scores, expected)
    assert result.token_list == expected.argmax(dim=-1).tolist()
    assert not torch.equal(expected, logits)


def test_sampling_uses_each_rows_generator_only() -> None:
    logits = (peaked_logits(1, seed=3) / 3).repeat(4, 1)  # flat enough to sample varied tokens
    state = torch.random.get_rng_state()
    first = sample(logits, [row(temperature=1.0, seed=s) for s in (1, 2, 1, 2)], lambda i: [1, 2]).token_list
    again = sample(logits, [row(temperature=1.0, seed=s) for s in (1, 2, 1, 2)], lambda i: [1, 2]).token_list
    assert torch.equal(state, torch.random.get_rng_state())
    assert first == again and first[0] == first[2] and first[1] == first[3]
    draws = [sample(logits[:1], [row(temperature=1.0, seed=s)], lambda i: [1, 2]).token_list[0] for s in range(40)]
    assert len(set(draws)) > 5


def test_sampled_frequencies_follow_the_distribution() -> None:
    logits = torch.full((1, VOCAB), float("-inf"))
    logits[0, 10], logits[0, 20] = 0.0, torch.log(torch.tensor(3.0))  # p = 0.25 / 0.75
    r = row(temperature=1.0, seed=0)
    counts = {10: 0, 20: 0}
    for _ in range(2000):
        counts[sample(logits, [r], lambda i: [1, 2]).token_list[0]] += 1
    assert 0.2 < counts[10] / 2000 < 0.3


def test_logprobs_are_raw_model_logprobs() -> None:
    logits = peaked_logits(2, seed=5)
    rows = [row(temperature=0.0, logprobs=2, logit_bias=((3, 50.0),)), row(temperature=0.0)]
    result = sample(logits, rows, lambda i: [1, 2])
    raw = torch.log_softmax(logits[0], dim=-1)
    chosen, top = result.logprobs[0]
    assert result.token_list[0] == 3  # the bias decided the token ...
    assert chosen == pytest.approx(float(raw[3]))  # ... but the logprob is the model's own
    assert [t for t, _ in top] == torch.topk(raw, 2).indices.tolist()
    assert result.logprobs[1] is None


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_detokenizer_matches_a_full_decode(skip: bool) -> None:
    tok = gpt2_tokenizer()
    text = "Héllo wörld — 東京タワー 🚀🚀 naïve café<|endoftext|> done\n\nnext line 😀"
    ids = tok(text)["input_ids"]
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip)
    pieces = [detok.push(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)
    assert not any("\ufffd" in p for p in pieces)


def test_incremental_detokenizer_flushes_a_cut_character() -> None:
    tok = gpt2_tokenizer()
    ids = tok("🚀")["input_ids"]
    detok = IncrementalDetokenizer(tok, skip_special_tokens=True)
    assert [detok.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.flush() == tok.decode(ids[:-1])
