"""Closing pressure: which tokens it prefers, and when, given what was generated so far."""

from __future__ import annotations

import json

import torch

from gateway.engine.grammar import CLOSING_BIAS, ClosingPressure, ClosingVocab

VOCAB = [b"{", b'"', b"name", b'":', b"5", b"12", b",", b"}", b"]", b'",', b'", "', b'"]', b"x", b" ", b"\\", b"true"]
VOCAB += [b"[", b"},", b" },", b"}]", b"}}", b"]],", b'"},', b", "]
ID = {t: i for i, t in enumerate(VOCAB)}


def run(tokens: list[bytes], *, start_at: int = 100, cap: int = 3) -> torch.Tensor:
    """Feed `tokens` as if sampled one by one; return the bias added on the step after them."""
    pressure = ClosingPressure(start_at, cap, ClosingVocab(VOCAB))
    ids: list[int] = []
    for token in [*tokens, None]:
        scores = pressure(torch.tensor([ids or [0]]), torch.zeros(1, len(VOCAB)))
        if token is not None:
            ids.append(ID[token])
    return scores[0]


CLOSERS = {b"}": CLOSING_BIAS, b"]": CLOSING_BIAS, b"}]": CLOSING_BIAS, b"}}": CLOSING_BIAS}


def preferred(bias: torch.Tensor) -> dict[bytes, float]:
    return {VOCAB[i]: float(b) for i, b in enumerate(bias) if b}


def test_no_pressure_early_in_short_strings_and_numbers() -> None:
    assert not preferred(run([b"{", b'"', b"x"]))
    assert not preferred(run([b"{", b'"', b"name", b'":', b"5", b"12"]))


def test_a_long_string_prefers_its_closing_quote() -> None:
    bias = preferred(run([b"{", b'"', b"x", b"x", b"x"]))
    assert bias == {b'"': CLOSING_BIAS, b'"]': CLOSING_BIAS}  # not `",` nor `", "`: they start another item


def test_an_escaped_quote_does_not_end_the_string() -> None:
    bias = preferred(run([b"{", b'"', b"\\", b'"', b"x", b"x"]))  # \" then three tokens in the string
    assert b'"' in bias


def test_a_long_number_prefers_closing_then_separating() -> None:
    bias = preferred(run([b"{", b'"', b"name", b'":', b"5", b"12", b"5"]))
    assert bias == {**CLOSERS, b",": CLOSING_BIAS / 2, b", ": CLOSING_BIAS / 2}


def test_a_literal_is_not_a_number() -> None:
    assert not preferred(run([b"{", b'"', b"name", b'":', b"true", b"true", b"true"]))


def test_past_start_at_everything_leans_to_closing() -> None:
    assert preferred(run([b"{"], start_at=1)) == {**CLOSERS, b",": CLOSING_BIAS / 2, b", ": CLOSING_BIAS / 2}
    assert b'"' in preferred(run([b"{", b'"'], start_at=2))
    assert not preferred(run([b"{"], start_at=2))


def test_the_vocabulary_classes() -> None:
    vocab = ClosingVocab(VOCAB)
    assert {VOCAB[i] for i in vocab.close_string.tolist()} == {b'"', b'"]'}
    assert {VOCAB[i] for i in vocab.close_container.tolist()} == set(CLOSERS)  # no `},`: it opens another item
    separators = {closed: {VOCAB[i] for i in ids.tolist()} for closed, ids in vocab.separators.items()}
    assert separators == {0: {b",", b", "}, 1: {b"},", b" },"}, 2: {b"]],"}}


def test_a_comma_that_would_start_another_array_item_is_never_preferred() -> None:
    after_item = [b"[", b"{", b'"', b"name", b'":', b"5", b"}"]  # [{"name":5}
    assert preferred(run(after_item, start_at=1)) == CLOSERS
    inside_item = after_item[:-1]  # [{"name":5 -- `,` stays in the object, `},` would start an item
    assert preferred(run(inside_item, start_at=1)) == {**CLOSERS, b",": CLOSING_BIAS / 2, b", ": CLOSING_BIAS / 2}


def test_a_comma_that_continues_an_outer_object_is_preferred_half() -> None:
    nested = [b"{", b'"', b"x", b'":', b"{", b'"', b"name", b'":', b"5"]  # {"x":{"name":5
    sep = CLOSING_BIAS / 2
    assert preferred(run(nested, start_at=1)) == {**CLOSERS, b",": sep, b", ": sep, b"},": sep, b" },": sep}
    in_string = [b"[", b'"', b"{", b"[", b'"']  # brackets inside a string do not count
    assert preferred(run(in_string, start_at=1)) == CLOSERS


def test_a_model_that_repeats_items_still_ends_the_array_within_its_budget() -> None:
    """Real grammar, real tokenizer, a stand-in model whose favourite tokens start another item."""
    from gateway.engine.grammar import GrammarCache
    from tests.unit.helpers import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    cache = GrammarCache(tokenizer, len(tokenizer), frozenset({tokenizer.eos_token_id}))
    schema = {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}
    budget = 64
    mask, pressure = (factory() for factory in cache.processors(cache.compile(schema), budget))
    pieces = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    likes_commas = torch.tensor([20.0 * ("," in p) + 10.0 * ("{" in p) for p in pieces])
    ids = [tokenizer.eos_token_id]  # the "prompt"
    for _ in range(budget):
        scores = pressure(torch.tensor([ids]), mask(torch.tensor([ids]), likes_commas.clone()[None]))
        ids.append(int(scores.argmax()))
        if ids[-1] == tokenizer.eos_token_id:
            break
    text = tokenizer.decode(ids[1:-1])
    assert ids[-1] == tokenizer.eos_token_id, f"cut off: {text!r}"
    assert len(json.loads(text)) > 1  # it did loop, then closed
