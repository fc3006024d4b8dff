"""Closing pressure: which tokens it prefers, and when, given what was generated so far."""

from __future__ import annotations

import torch

from gateway.engine.grammar import CLOSING_BIAS, ClosingPressure, ClosingVocab

VOCAB = [b"{", b'"', b"name", b'":', b"5", b"12", b",", b"}", b"]", b'",', b'", "', b'"]', b"x", b" ", b"\\", b"true"]
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
    assert bias == {b"}": CLOSING_BIAS, b"]": CLOSING_BIAS, b",": CLOSING_BIAS / 2}


def test_a_literal_is_not_a_number() -> None:
    assert not preferred(run([b"{", b'"', b"name", b'":', b"true", b"true", b"true"]))


def test_past_start_at_everything_leans_to_closing() -> None:
    assert preferred(run([b"{"], start_at=1)) == {b"}": CLOSING_BIAS, b"]": CLOSING_BIAS, b",": CLOSING_BIAS / 2}
    assert b'"' in preferred(run([b"{", b'"'], start_at=2))
    assert not preferred(run([b"{"], start_at=2))
