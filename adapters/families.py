"""The family records. Adding a family = adding one record here (and a template file if needed)."""

from __future__ import annotations

from types import MappingProxyType

from adapters.family import FamilyAdapter

GENERIC = FamilyAdapter(
    name="generic",
    description="Unknown family: trust the tokenizer's chat_template; completion-only without one.",
    priority=-1000,
)

SMOLLM2 = FamilyAdapter(
    name="smollm2",
    description="SmolLM2 instruct (Llama architecture, ChatML template, <|im_start|> as bos).",
    model_types=frozenset({"llama"}),
    architectures=frozenset({"LlamaForCausalLM"}),
    vocab_probes=("<|im_start|>", "<|im_end|>"),
    bos_token="<|im_start|>",
    name_patterns=(r"(?i)smollm2.*",),
    priority=10,
    extra_stop_tokens=("<|im_end|>",),
    expected_ids=MappingProxyType({"<|im_end|>": 2}),
)

ALL_FAMILIES: tuple[FamilyAdapter, ...] = (SMOLLM2, GENERIC)
