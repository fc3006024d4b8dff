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
    details: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    grammar: Any = field(default=None, repr=False)  # GrammarCache, created on the first constrained request
    max_token_chars: int | None = field(default=None, repr=False)  # longest token, computed on first use

    def describe(self) -> dict[str, Any]:
        return {
            **self.pipeline.describe(),
            "context_length": self.context_length,
            "sampling_defaults": self.sampling_defaults,
            **self.details,
        }
