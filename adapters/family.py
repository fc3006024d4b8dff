"""One declarative record per model family: data, not subclasses.

The shared pipeline (`adapters.pipeline`) is the only code that acts on these records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

TemplatePolicy = Literal["tokenizer", "override", "fallback_if_missing", "none"]
SystemStrategy = Literal["native", "merge_into_first_user"]


@dataclass(frozen=True)
class FamilyAdapter:
    """What is special about a family: how to detect it, load it, prompt it and stop it."""

    name: str
    description: str = ""
    # detection: config.json model_type / architectures, plus tokens that must be in the vocab
    model_types: frozenset[str] = frozenset()
    architectures: frozenset[str] = frozenset()
    vocab_probes: tuple[str, ...] = ()
    bos_token: str | None = None  # the tokenizer's bos string must equal this (SmolLM2: <|im_start|>)
    name_patterns: tuple[str, ...] = ()  # anchored regexes on the model's basename, last resort
    priority: int = 0
    # loading (read by the gateway's loader, not by the pipeline)
    trust_remote_code: bool = False  # only where the checkpoint's auto_map demands custom code
    needs_external_tokenizer: bool = False  # the checkpoint ships no tokenizer (OpenELM: Llama-2's)
    # prompt
    template_policy: TemplatePolicy = "tokenizer"
    chat_template: str | None = None  # file name under adapters/templates/
    system_strategy: SystemStrategy = "native"
    # tokens and stopping
    eos_override: str | None = None
    pad_preference: tuple[str, ...] = ()
    extra_stop_tokens: tuple[str, ...] = ()  # resolved to ids at load, only if present in the vocab
    stop_strings: tuple[str, ...] = ()  # text-only turn markers (OpenELM's <|user|> is not a token)
    expected_ids: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # tools (used by a later issue)
    tool_parser: str | None = None
    tool_parser_marker: str | None = None  # the parser applies only if the chosen template contains this
