"""Incremental, multi-byte-safe detokenization for streamed tokens.

The prefix/read-offset scheme (as in vLLM and TGI): decode a short window of recent tokens twice,
with and without the new ones, and emit the difference once it no longer ends in an incomplete
UTF-8 sequence. Decoding a window rather than the whole text keeps a step O(1), and starting the
window a few tokens back keeps SentencePiece's leading-space handling identical to a full decode.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back the text they complete (possibly "")."""

    __slots__ = ("_decode", "_ids", "_prefix", "_read", "_skip")

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool) -> None:
        self._decode = tokenizer.decode
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the window
        self._read = 0  # tokens before this one have been emitted

    def push(self, token_id: int) -> str:
        ids = self._ids
        ids.append(token_id)
        skip = self._skip
        before = self._decode(ids[self._prefix : self._read], skip_special_tokens=skip) if self._read else ""
        after = self._decode(ids[self._prefix :], skip_special_tokens=skip)
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (e.g. a truncated multi-byte character)."""
        if self._read == len(self._ids):
            return ""
        skip = self._skip
        before = self._decode(self._ids[self._prefix : self._read], skip_special_tokens=skip) if self._read else ""
        after = self._decode(self._ids[self._prefix :], skip_special_tokens=skip)
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""
