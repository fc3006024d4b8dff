"""The per-model cache of compiled JSON-schema grammars stays within its memory limit."""

from __future__ import annotations

from gateway.engine.grammar import GRAMMAR_CACHE_BYTES, GrammarCache
from tests.unit.batched_tiny import gpt2_tokenizer


def _schema(i: int) -> dict:
    kinds = ["string", "integer", "number", "boolean"]
    return {
        "type": "object",
        "properties": {f"field_{i}_{j}": {"type": kinds[j % 4]} for j in range(6)},
        "required": [f"field_{i}_0"],
    }


def test_a_new_schema_per_request_does_not_grow_the_cache_without_bound() -> None:
    tokenizer = gpt2_tokenizer()
    limit = 256 << 10
    bounded = GrammarCache(tokenizer, len(tokenizer), frozenset({50256}), cache_limit_bytes=limit)
    unbounded = GrammarCache(tokenizer, len(tokenizer), frozenset({50256}), cache_limit_bytes=-1)
    for i in range(40):
        bounded.compile(_schema(i))
        unbounded.compile(_schema(i))
    assert unbounded.cache_size_bytes() > 2 * limit  # 40 schemas need more than the limit ...
    assert 0 < bounded.cache_size_bytes() <= limit * 1.5  # ... the bounded cache keeps to it (about)
    assert bounded.compile(_schema(0)) is not None  # an evicted schema compiles again
    assert GrammarCache(tokenizer, len(tokenizer), frozenset()).cache_limit_bytes == GRAMMAR_CACHE_BYTES
