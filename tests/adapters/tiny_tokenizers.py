"""Tiny stand-in tokenizers for families with no tokenizer fixture (DeepSeek-V2, Llama-3/3.1, Gemma-2/3, ...).

Each is a `tokenizers` WordLevel model whose special tokens sit at the family's REAL ids (the vocab dict maps
them there directly; the gap between the few plain words and the specials is simply unused), with the real
BOS behaviour (a TemplateProcessing post-processor where the real tokenizer prepends BOS) and the family's
published chat template. Ids and templates: shared/docs/model-families.md §2 and reference_templates.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from tests.adapters import reference_templates as ref

# Plain words at the lowest free ids, so that rendered prompts tokenize to something readable.
WORDS = ("Hi", "Hello", "!", "How", "are", "you", "?", "Be", "brief", ".", "user", "assistant", "system", "model")
UNK = "[UNK]"


@dataclass(frozen=True)
class TinySpec:
    """One family's tokenizer facts plus the config / generation_config a tiny model of it would carry."""

    family: str
    specials: Mapping[str, int]
    vocab_size: int  # the real model's embedding rows
    bos: str | None
    eos: str
    pad: str | None = None
    unk: str | None = None
    add_bos: bool = False  # the real tokenizer prepends BOS with add_special_tokens=True
    chat_template: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    generation_config: Mapping[str, Any] = field(default_factory=dict)


def _llama3_specials(v31: bool) -> dict[str, int]:
    specials = {
        "<|begin_of_text|>": 128000,
        "<|end_of_text|>": 128001,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eot_id|>": 128009,
    }
    if v31:  # 3.1 renamed three reserved slots
        specials.update({"<|finetune_right_pad_id|>": 128004, "<|eom_id|>": 128008, "<|python_tag|>": 128010})
    else:
        specials.update(
            {
                "<|reserved_special_token_2|>": 128004,
                "<|reserved_special_token_4|>": 128008,
                "<|reserved_special_token_5|>": 128010,
            }
        )
    return specials


def _gemma_specials(start: int, end: int) -> dict[str, int]:
    return {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<start_of_turn>": start, "<end_of_turn>": end}


SPECS: dict[str, TinySpec] = {
    "deepseek_v2": TinySpec(
        family="deepseek_v2",
        specials={"<｜begin▁of▁sentence｜>": 100000, "<｜end▁of▁sentence｜>": 100001},
        vocab_size=102400,
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        pad="<｜end▁of▁sentence｜>",
        add_bos=True,
        chat_template=ref.DEEPSEEK_V2,
        config={
            "model_type": "deepseek_v2",
            "architectures": ["DeepseekV2ForCausalLM"],
            "bos_token_id": 100000,
            "eos_token_id": 100001,
        },
        generation_config={"bos_token_id": 100000, "eos_token_id": 100001},
    ),
    # The April-2024 Llama-3 files: eos <|end_of_text|> everywhere (the non-stopping bug, §2.7).
    "llama3": TinySpec(
        family="llama3",
        specials=_llama3_specials(v31=False),
        vocab_size=128256,
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        add_bos=True,
        chat_template=ref.LLAMA3,
        config={
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "bos_token_id": 128000,
            "eos_token_id": 128001,
        },
        generation_config={"bos_token_id": 128000, "eos_token_id": 128001},
    ),
    "llama3.1": TinySpec(
        family="llama3.1",
        specials=_llama3_specials(v31=True),
        vocab_size=128256,
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        add_bos=True,
        chat_template=ref.LLAMA31,
        config={
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "bos_token_id": 128000,
            "eos_token_id": [128001, 128008, 128009],
        },
        generation_config={"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]},
    ),
    # Early gemma-2 generation_config: eos 1 only, so <end_of_turn> must come from the adapter (§2.9).
    "gemma2": TinySpec(
        family="gemma2",
        specials=_gemma_specials(106, 107),
        vocab_size=256000,
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        add_bos=True,
        chat_template=ref.GEMMA2,
        config={
            "model_type": "gemma2",
            "architectures": ["Gemma2ForCausalLM"],
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
        },
        generation_config={"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
    ),
    "gemma3": TinySpec(
        family="gemma3",
        specials={**_gemma_specials(105, 106), "<start_of_image>": 255999},
        vocab_size=262144,
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        add_bos=True,
        chat_template=ref.GEMMA3,
        config={
            "model_type": "gemma3_text",
            "architectures": ["Gemma3ForCausalLM"],
            "bos_token_id": 2,
            "eos_token_id": [1, 106],
            "pad_token_id": 0,
        },
        generation_config={"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0},
    ),
    "phi3": TinySpec(
        family="phi3",
        specials={
            "<unk>": 0,
            "<s>": 1,
            "</s>": 2,
            "<|endoftext|>": 32000,
            "<|assistant|>": 32001,
            "<|placeholder1|>": 32002,
            "<|placeholder2|>": 32003,
            "<|placeholder3|>": 32004,
            "<|placeholder4|>": 32005,
            "<|system|>": 32006,
            "<|end|>": 32007,
            "<|placeholder5|>": 32008,
            "<|placeholder6|>": 32009,
            "<|user|>": 32010,
        },
        vocab_size=32064,
        bos="<s>",
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        unk="<unk>",
        chat_template=ref.PHI3,
        config={
            "model_type": "phi3",
            "architectures": ["Phi3ForCausalLM"],
            "bos_token_id": 1,
            "eos_token_id": 32000,
            "pad_token_id": 32000,
        },
        generation_config={"bos_token_id": 1, "eos_token_id": [32007, 32001, 32000], "pad_token_id": 32000},
    ),
    "smollm2": TinySpec(
        family="smollm2",
        specials={"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
        vocab_size=49152,
        bos="<|im_start|>",
        eos="<|im_end|>",
        pad="<|im_end|>",
        unk="<|endoftext|>",
        chat_template=ref.SMOLLM2,
        config={
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
        },
        generation_config={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2},
    ),
}


def build_tiny_tokenizer(spec: TinySpec, *, chat_template: str | bool = True) -> PreTrainedTokenizerFast:
    """A fast tokenizer with `spec`'s specials at their real ids; `chat_template=False` leaves none set."""
    taken = set(spec.specials.values())
    free = (i for i in range(spec.vocab_size) if i not in taken)
    vocab = dict(spec.specials)
    for word in (UNK, *WORDS):
        vocab.setdefault(word, next(free))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=spec.unk or UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.specials])
    if spec.add_bos and spec.bos:
        bos_id = spec.specials[spec.bos]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B", special_tokens=[(spec.bos, bos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token=spec.unk or UNK,
    )
    if chat_template is True:
        tokenizer.chat_template = spec.chat_template
    elif isinstance(chat_template, str):
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_tokenizer(family: str, **kwargs: Any) -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(SPECS[family], **kwargs)
