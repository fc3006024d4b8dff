"""The per-model cache of compiled JSON-schema grammars stays within its memory limit."""

from __future__ import annotations

import os
import time

import pytest

from gateway.engine.grammar import GRAMMAR_CACHE_BYTES, GrammarCache, GrammarError, GrammarTooComplexError
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


def test_a_compile_past_its_budget_is_stopped_and_the_next_one_works() -> None:
    tokenizer = gpt2_tokenizer()
    cache = GrammarCache(tokenizer, len(tokenizer), frozenset({50256}))
    try:
        assert cache.compile(_schema(1)) is not None  # starts the compiler process
        first_pid = cache._process.pid
        huge = {"type": "string", "enum": [f"value-{i:06d}-xyz" for i in range(20_000)]}  # minutes to compile
        started = time.monotonic()
        with pytest.raises(GrammarTooComplexError, match="within 0.5 s"):
            cache.compile(huge, budget_s=0.5)
        assert time.monotonic() - started < 30  # generous: a loaded machine; unbounded it takes minutes
        assert cache._process.kills == 1 and not _alive(first_pid)
        assert cache.compile(_schema(2)) is not None  # a fresh child takes the next schema
        assert cache._process.pid != first_pid
        with pytest.raises(GrammarError, match="nested too deeply"):
            deep: dict = {"type": "string"}
            for _ in range(2000):
                deep = {"type": "array", "items": deep}
            cache.compile(deep)
    finally:
        cache.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
