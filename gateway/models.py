"""A model as the services see it: spec, prompt pipeline, engine and limits (no torch here)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from adapters import PromptPipeline
from gateway.engine.base import Engine
from gateway.settings import ModelSpec


@dataclass
class ServedModel:
    spec: ModelSpec
    pipeline: PromptPipeline
    engine: Engine
    context_length: int
    vocab_size: int
    sampling_defaults: dict[str, float] = field(default_factory=dict)
    # The model's own cap for requests without max_tokens (generation_config's max_new_tokens, or the
    # embedded model's); the spec's default_max_tokens (models file or server setting) wins over it.
    model_max_tokens: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    grammar: Any = field(default=None, repr=False)  # GrammarCache, created on the first constrained request
    max_token_chars: int | None = field(default=None, repr=False)  # longest token, computed on first use

    @property
    def default_max_tokens(self) -> int | None:
        """Max new tokens for a request that sets none; None = the rest of the context window."""
        cap = self.spec.default_max_tokens if self.spec.default_max_tokens is not None else self.model_max_tokens
        return cap or None  # 0 asks for the whole window

    def describe(self) -> dict[str, Any]:
        return {
            **self.pipeline.describe(),
            "context_length": self.context_length,
            "default_max_tokens": self.default_max_tokens,
            "sampling_defaults": self.sampling_defaults,
            **self.details,
        }
