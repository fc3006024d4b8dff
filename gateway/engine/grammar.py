"""Grammar-constrained decoding with xgrammar: JSON schemas compiled once per model and schema.

A compiled grammar becomes logits-processor factories (one stateful matcher per sequence) that every
engine applies through SamplingParams.logits_processors, plus a closing pressure near the end of the
token budget so a small model that loops inside an array still ends with valid JSON.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jsonschema
import torch
from transformers import LogitsProcessor

from gateway.engine.grammar_compile import CompileFailed, CompilerProcess, CompileTimeout

if TYPE_CHECKING:  # xgrammar itself loads with the first constrained request (~13 MB of RSS otherwise)
    import xgrammar as xgr

NUMBER_CHARS = frozenset(b"0123456789.-+eE")
OPENERS, CLOSERS, OBJECT_OPEN = frozenset(b"{["), frozenset(b"}]"), ord("{")
# Whole tokens (leading spaces stripped) that close a string, close containers, or separate items.
_CLOSE_STRING = re.compile(rb'"[}\] ]*')
_CLOSE_CONTAINER = re.compile(rb"[}\]][}\] ]*")
_SEPARATOR = re.compile(rb'([}\] ]*),[ "]*')
CLOSING_BIAS = 50.0
# Closing is preferred over the last half of the budget (at least 32 tokens), so even an output caught
# in the middle of a nested item can finish it; one string may take an eighth of the budget (at least
# 16 tokens) before its closing quote is preferred. Large budgets keep long strings possible.
CLOSING_MARGIN_MIN, CLOSING_MARGIN_SHARE = 32, 0.5
STRING_SHARE_MIN, STRING_SHARE = 16, 0.125


# Keywords the grammar compiler accepts but does not enforce; a schema using them is refused rather
# than silently producing output that may not validate.
UNENFORCED_KEYWORDS = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "dependentRequired",
        "dependencies",
        "contains",
        "uniqueItems",
        "unevaluatedProperties",
        "unevaluatedItems",
        "multipleOf",
        "propertyNames",
    }
)
_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")


class GrammarError(ValueError):
    """The schema uses something the grammar compiler cannot enforce."""


def check_enforceable(schema: Any, path: str = "schema", *, names: bool = False) -> None:
    """Raise GrammarError for an invalid schema or one using keywords that would not be enforced.
    `names`: this dict maps property/definition names to subschemas (its keys are not keywords)."""
    if path == "schema":
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise GrammarError(f"invalid JSON schema: {exc.message}") from exc
    if isinstance(schema, dict):
        for key, value in schema.items():
            if not names and key in UNENFORCED_KEYWORDS:
                raise GrammarError(f"'{key}' at {path} cannot be enforced")
            if not names and key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                raise GrammarError(f"only local $ref are supported ({value!r} at {path})")
            child_names = not names and key in _NAME_MAPS
            check_enforceable(value, f"{path}.{key}", names=child_names)
    elif isinstance(schema, list):
        for i, item in enumerate(schema):
            check_enforceable(item, f"{path}[{i}]")


_NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})


class ClosingPressure(LogitsProcessor):
    """Prefer tokens that finish the JSON among those the grammar allows (masked tokens stay -inf).

    Inside a string: tokens that start with `"`. Outside: tokens made only of `}` / `]` most, then ones
    with a `,` that lands in an object (it ends a number, or moves on to a key the object still needs).
    A comma that lands in an array (`,`, `},` after an item) starts another item, so it is never
    preferred: a small model repeating an item ends the array instead. Applies from step `start_at` on,
    inside a string that has run `string_cap` tokens, and inside a number that has run `string_cap`
    tokens. So an output that would run out of budget closes instead of being cut off.
    """

    def __init__(self, start_at: int, string_cap: int, vocab: ClosingVocab) -> None:
        self.start_at = start_at
        self.string_cap = string_cap
        self.vocab = vocab
        self.step = 0
        self.in_string = False
        self.escaped = False
        self.string_tokens = 0
        self.number_tokens = 0
        self.open: list[int] = []  # `{` / `[` of the containers open outside strings, innermost last

    def _advance(self, token_id: int) -> None:
        token = self.vocab.decoded[token_id] if token_id < len(self.vocab.decoded) else b""
        self.string_tokens = self.string_tokens + 1 if self.in_string else 0
        numeric = not self.in_string and bool(token.strip()) and set(token.strip()) <= NUMBER_CHARS
        self.number_tokens = self.number_tokens + 1 if numeric else 0
        for byte in token:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif byte == 0x5C:  # backslash
                    self.escaped = True
                elif byte == 0x22:  # quote
                    self.in_string = False
            elif byte == 0x22:
                self.in_string, self.string_tokens = True, 0
            elif byte in OPENERS:
                self.open.append(byte)
            elif byte in CLOSERS and self.open:
                self.open.pop()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.step > 0:
            self._advance(int(input_ids[0, -1]))
        self.step += 1
        closing = self.step > self.start_at
        if self.in_string:
            if closing or self.string_tokens >= self.string_cap:
                scores[:, self.vocab.close_string.to(scores.device)] += CLOSING_BIAS
        elif closing or self.number_tokens >= self.string_cap:
            scores[:, self.vocab.close_container.to(scores.device)] += CLOSING_BIAS
            for closed, ids in self.vocab.separators.items():
                # the comma of these tokens lands in the container left after `closed` closers
                if len(self.open) > closed and self.open[-1 - closed] == OBJECT_OPEN:
                    scores[:, ids.to(scores.device)] += CLOSING_BIAS / 2
        return scores


class ClosingVocab:
    """Token ids that close a string or a container, or separate items, from the decoded vocabulary.

    A string closer is a quote followed by nothing but container closers (`"`, `"]`, `"}}`): `",` and
    `", "` are left out, as in an array they start the next item and a string array would never end.
    A container closer has no comma either (`}`, `}]`, not `},`). Separators (`,`, `},`, `]],`) are
    grouped by how many containers they close before their comma.
    """

    def __init__(self, decoded: list[bytes]) -> None:
        self.decoded = decoded
        tokens = [(i, t.lstrip()) for i, t in enumerate(decoded) if t.strip()]
        self.close_string = self._ids(tokens, _CLOSE_STRING)
        self.close_container = self._ids(tokens, _CLOSE_CONTAINER)
        by_closed: dict[int, list[int]] = {}
        for i, token in tokens:
            match = _SEPARATOR.fullmatch(token)
            if match:
                closed = sum(byte in CLOSERS for byte in match.group(1))
                by_closed.setdefault(closed, []).append(i)
        self.separators = {closed: torch.tensor(ids, dtype=torch.long) for closed, ids in sorted(by_closed.items())}

    @staticmethod
    def _ids(tokens: list[tuple[int, bytes]], pattern: re.Pattern[bytes]) -> torch.Tensor:
        return torch.tensor([i for i, t in tokens if pattern.fullmatch(t)], dtype=torch.long)


# Compiled grammars are kept per model, least recently used first out, within this many bytes (xgrammar's
# own estimate): ~60 KB per small schema, so a client that sends a new schema with every request would
# otherwise grow the server forever.
GRAMMAR_CACHE_BYTES = 64 << 20
COMPILE_BUDGET_S = 3.0  # see Settings.grammar_compile_seconds


class GrammarTooComplexError(GrammarError):
    """The schema did not compile within the time budget."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(f"schema too complex to compile within {budget_s:g} s")
        self.budget_s = budget_s


class GrammarCache:
    """Per-model grammar compiler (a child process, see grammar_compile.py) and cache of compiled grammars."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_token_ids: frozenset[int],
        cache_limit_bytes: int = GRAMMAR_CACHE_BYTES,
    ) -> None:
        self.cache_limit_bytes = cache_limit_bytes
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_ids = sorted(stop_token_ids)
        self._info: xgr.TokenizerInfo | None = None
        self._process: CompilerProcess | None = None
        self._closing: ClosingVocab | None = None
        self._cache: OrderedDict[str, tuple[xgr.CompiledGrammar, int]] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.Lock()

    def _get_compiler(self) -> CompilerProcess:
        with self._lock:
            if self._process is None:
                import xgrammar as xgr

                self._info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_ids or None
                )
                self._closing = ClosingVocab(self._info.decoded_vocab)
                self._process = CompilerProcess(self._info.serialize_json())
            return self._process

    def cache_size_bytes(self) -> int:
        return self._cache_bytes

    def _cached(self, key: str) -> xgr.CompiledGrammar | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            self._cache.move_to_end(key)
            return entry[0]

    def _store(self, key: str, compiled: xgr.CompiledGrammar) -> None:
        size = int(compiled.memory_size_bytes)
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = (compiled, size)
            self._cache_bytes += size
            while self.cache_limit_bytes >= 0 and self._cache_bytes > self.cache_limit_bytes and len(self._cache) > 1:
                _, (_, dropped) = self._cache.popitem(last=False)
                self._cache_bytes -= dropped

    def compile(self, schema: dict[str, Any], budget_s: float = COMPILE_BUDGET_S) -> xgr.CompiledGrammar:
        """Compile a JSON schema with compact separators (no endless whitespace from a small model).

        GrammarTooComplexError when compiling takes longer than budget_s (the compile is stopped)."""
        try:
            check_enforceable(schema)
            key = json.dumps(schema)
        except RecursionError as exc:  # nested deeper than Python's stack allows
            raise GrammarError("the schema is nested too deeply") from exc
        cached = self._cached(key)
        if cached is not None:
            return cached
        compiler = self._get_compiler()
        try:
            payload = compiler.compile(key, budget_s)
        except CompileTimeout as exc:
            raise GrammarTooComplexError(budget_s) from exc
        except CompileFailed as exc:
            lines = str(exc).strip().splitlines()
            raise GrammarError(_LOG_PREFIX.sub("", lines[0]) if lines else "compile failed") from exc
        import xgrammar as xgr

        compiled = xgr.CompiledGrammar.deserialize_json(payload, self._info)
        self._store(key, compiled)
        return compiled

    def close(self) -> None:
        """Stop the compiler process (also in the middle of a compile)."""
        if self._process is not None:
            self._process.close()

    def processors(self, compiled: xgr.CompiledGrammar, close_by: int) -> tuple[Callable[[], Any], ...]:
        """Factories: the grammar mask, then closing pressure ending at token `close_by`."""
        from xgrammar.contrib.hf import LogitsProcessor as XGrammarLogitsProcessor

        closing = self._closing
        start_at = max(0, close_by - max(CLOSING_MARGIN_MIN, int(close_by * CLOSING_MARGIN_SHARE)))
        string_cap = max(STRING_SHARE_MIN, int(close_by * STRING_SHARE))
        return (lambda: XGrammarLogitsProcessor(compiled), lambda: ClosingPressure(start_at, string_cap, closing))
