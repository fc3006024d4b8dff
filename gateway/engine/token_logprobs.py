"""Logprob records of sampled and prompt tokens, with each token's text (shared by both engines).

A token's text is decoded on its own (`tokenizer.decode([id])`), as OpenAI's `token` field shows it, and
kept: a stream with top-k logprobs asks for the same few ids over and over.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.engine.logits import prompt_logprobs
from gateway.engine.types import TokenLogprob


class TokenLogprobs:
    """Builds `TokenLogprob`s for one model's tokenizer (one engine thread uses it: no lock)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}

    def text_of(self, token_id: int) -> str:
        text = self._text.get(token_id)
        if text is None:
            text = self._text[token_id] = self.tokenizer.decode([token_id])
        return text

    def token(self, token_id: int, logprob: float | None, top: Iterable[tuple[int, float]]) -> TokenLogprob:
        return TokenLogprob(
            token_id=token_id,
            token=self.text_of(token_id),
            logprob=logprob,
            top=tuple((self.text_of(i), lp) for i, lp in top),
        )

    def prompt(self, model: Any, ids: list[int], k: int) -> list[TokenLogprob]:
        """Every prompt token's logprob and top k under `model` (the first has none: nothing predicts it)."""
        first = TokenLogprob(token_id=ids[0], token=self.text_of(ids[0]), logprob=None)
        rest = [
            self.token(token_id, logprob, top)
            for token_id, (logprob, top) in zip(ids[1:], prompt_logprobs(model, ids, k), strict=True)
        ]
        return [first, *rest]
