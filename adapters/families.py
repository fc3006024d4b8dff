"""The family records. Adding a family = adding one record here (and a template file if needed).

Facts (ids, templates, stop sets) come from shared/docs/model-families.md; section numbers are cited per
record. Ids listed in `expected_ids` are checked at load time and a mismatch is logged, never trusted blindly.
"""

from __future__ import annotations

from types import MappingProxyType

from adapters.family import FamilyAdapter

GENERIC = FamilyAdapter(
    name="generic",
    description="Unknown family: trust the tokenizer's chat_template; completion-only without one.",
    priority=-1000,
)

# §2.1 — base LM, no chat training and no template: completion-only unless the operator opts in.
GPT2 = FamilyAdapter(
    name="gpt2",
    description="GPT-2 / distilgpt2: completion-only (no chat template); <|endoftext|> is bos = eos.",
    model_types=frozenset({"gpt2"}),
    architectures=frozenset({"GPT2LMHeadModel"}),
    vocab_probes=("<|endoftext|>",),
    name_patterns=(r"(?i)(distil)?gpt2(-.*)?",),
    template_policy="none",
    expected_ids=MappingProxyType({"<|endoftext|>": 50256}),
)

# §2.2 — custom modelling code, no tokenizer files, Zephyr-style template from the corenet recipe.
OPENELM = FamilyAdapter(
    name="openelm",
    description=(
        "Apple OpenELM-Instruct: remote modelling code; ships no tokenizer, so the loader must use a "
        "configured Llama-2 tokenizer (meta-llama/Llama-2-7b-hf); Zephyr template. The remote config "
        "breaks under transformers 5.x strict dataclasses."
    ),
    model_types=frozenset({"openelm"}),
    architectures=frozenset({"OpenELMForCausalLM"}),
    name_patterns=(r"(?i)openelm-.*",),
    trust_remote_code=True,
    needs_external_tokenizer=True,
    template_policy="override",
    chat_template="openelm.jinja",
    pad_preference=("<unk>",),  # apple's generate_openelm.py passes pad_token_id=0
    extra_stop_tokens=("</s>",),
    stop_strings=("<|user|>",),  # role markers are plain text in the Llama-2 vocab
    expected_ids=MappingProxyType({"</s>": 2, "<unk>": 0}),
)

# Llama-2 (and other <s>-bos Llama checkpoints): the tokenizer's own template, if it has one.
LLAMA2 = FamilyAdapter(
    name="llama2",
    description="Llama-2 style (<s>/</s> SentencePiece vocab): tokenizer template; completion-only base.",
    model_types=frozenset({"llama"}),
    architectures=frozenset({"LlamaForCausalLM"}),
    bos_token="<s>",
    name_patterns=(r"(?i)(meta-)?llama-2-.*",),
    priority=5,
    extra_stop_tokens=("</s>",),
    expected_ids=MappingProxyType({"</s>": 2}),
)

# §2.3 — ChatML; the Instruct generation_config lists both ids, the base one only <|endoftext|>.
QWEN2 = FamilyAdapter(
    name="qwen2",
    description="Qwen2 / Qwen2.5 (ChatML); hermes tool calls when the template has <tool_call> (2.5+).",
    model_types=frozenset({"qwen2"}),
    architectures=frozenset({"Qwen2ForCausalLM"}),
    vocab_probes=("<|im_start|>", "<|im_end|>"),
    name_patterns=(r"(?i)qwen2(\.5)?-.*",),
    priority=10,
    extra_stop_tokens=("<|im_end|>", "<|endoftext|>"),
    expected_ids=MappingProxyType({"<|im_end|>": 151645, "<|endoftext|>": 151643}),
    tool_parser="hermes",
    tool_parser_marker="<tool_call>",
)

# §2.4 — native in transformers 5 (no remote code); template emits BOS and the tokenizer adds one too.
DEEPSEEK_V2 = FamilyAdapter(
    name="deepseek_v2",
    description="DeepSeek-V2 / Coder-V2 (User:/Assistant: template with BOS); native deepseek_v2 class.",
    model_types=frozenset({"deepseek_v2"}),
    architectures=frozenset({"DeepseekV2ForCausalLM"}),
    vocab_probes=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    name_patterns=(r"(?i)deepseek-(coder-)?v2.*",),
    priority=10,
    extra_stop_tokens=("<｜end▁of▁sentence｜>",),
    expected_ids=MappingProxyType({"<｜begin▁of▁sentence｜>": 100000, "<｜end▁of▁sentence｜>": 100001}),
)

# §2.5 — model_type phi3 like Phi-3; <|im_sep|> tells them apart. The shipped template gates the
# assistant header on add_generation_prompt (the original release appends it after every user turn).
PHI4 = FamilyAdapter(
    name="phi4",
    description="Phi-4 (model_type phi3, <|im_sep|> ChatML variant); eos <|im_end|>, pad <|dummy_85|>.",
    model_types=frozenset({"phi3"}),
    architectures=frozenset({"Phi3ForCausalLM"}),
    vocab_probes=("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
    name_patterns=(r"(?i)phi-?4(-.*)?",),
    priority=20,
    template_policy="override",
    chat_template="phi4.jinja",
    eos_override="<|im_end|>",  # the original tokenizer says <|endoftext|> and never stops
    pad_preference=("<|dummy_85|>",),  # keeps pad != eos
    extra_stop_tokens=("<|endoftext|>",),
    expected_ids=MappingProxyType({"<|im_end|>": 100265, "<|endoftext|>": 100257, "<|dummy_85|>": 100349}),
)

# §2.5 — Phi-3 / 3.5: <|user|>/<|end|> markers; the ids are resolved from the vocab.
PHI3 = FamilyAdapter(
    name="phi3",
    description="Phi-3 / Phi-3.5 (<|user|> ... <|end|> template).",
    model_types=frozenset({"phi3"}),
    architectures=frozenset({"Phi3ForCausalLM"}),
    vocab_probes=("<|end|>", "<|user|>", "<|assistant|>"),
    name_patterns=(r"(?i)phi-3(\.5)?-.*",),
    priority=10,
    extra_stop_tokens=("<|end|>", "<|endoftext|>"),
    expected_ids=MappingProxyType({"<|end|>": 32007, "<|endoftext|>": 32000}),
)

# §2.6
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

# §2.7 — the April-2024 Llama-3 files stop only on <|end_of_text|>; chat turns end with <|eot_id|>.
LLAMA3 = FamilyAdapter(
    name="llama3",
    description="Llama-3 Instruct (header template with BOS; <|eot_id|> ends a turn).",
    model_types=frozenset({"llama"}),
    architectures=frozenset({"LlamaForCausalLM"}),
    vocab_probes=("<|eot_id|>", "<|start_header_id|>"),
    name_patterns=(r"(?i)(meta-)?llama-3-.*",),
    priority=20,
    extra_stop_tokens=("<|eot_id|>", "<|end_of_text|>"),
    expected_ids=MappingProxyType({"<|eot_id|>": 128009, "<|end_of_text|>": 128001}),
)

# §2.7 — 3.1 adds <|eom_id|> (end of a turn that awaits an ipython result) and a real pad token.
LLAMA31 = FamilyAdapter(
    name="llama3.1",
    description="Llama-3.1+ Instruct (date/tools system header; <|eot_id|> and <|eom_id|> end turns).",
    model_types=frozenset({"llama"}),
    architectures=frozenset({"LlamaForCausalLM"}),
    vocab_probes=("<|eot_id|>", "<|eom_id|>", "<|python_tag|>"),
    name_patterns=(r"(?i)(meta-)?llama-3\.[1-9]-.*",),
    priority=21,
    pad_preference=("<|finetune_right_pad_id|>",),
    extra_stop_tokens=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
    expected_ids=MappingProxyType({"<|eot_id|>": 128009, "<|eom_id|>": 128008, "<|end_of_text|>": 128001}),
    tool_parser="llama3_json",
    tool_parser_marker="<|python_tag|>",
)

# §2.8 — the v0.2 / early-v0.3 templates raise on a system role: fold it into the first [INST].
MISTRAL = FamilyAdapter(
    name="mistral",
    description="Mistral Instruct v0.1-v0.3 ([INST] template; system folded into the first user turn).",
    model_types=frozenset({"mistral"}),
    architectures=frozenset({"MistralForCausalLM"}),
    name_patterns=(r"(?i)mistral-.*",),
    priority=10,
    system_strategy="merge_into_first_user",
    extra_stop_tokens=("</s>",),
    expected_ids=MappingProxyType({"</s>": 2}),
    tool_parser="mistral",
    tool_parser_marker="[TOOL_CALLS]",
)

# §2.9 — no system role; <end_of_turn> ends a turn but early generation_configs list only <eos>.
GEMMA2 = FamilyAdapter(
    name="gemma2",
    description="Gemma / Gemma-2 instruct (<start_of_turn> template; system merged into first user turn).",
    model_types=frozenset({"gemma", "gemma2"}),
    architectures=frozenset({"GemmaForCausalLM", "Gemma2ForCausalLM"}),
    vocab_probes=("<start_of_turn>", "<end_of_turn>"),
    name_patterns=(r"(?i)gemma-2-.*",),
    priority=10,
    template_policy="fallback_if_missing",
    chat_template="gemma.jinja",
    system_strategy="merge_into_first_user",
    extra_stop_tokens=("<end_of_turn>", "<eos>"),
    expected_ids=MappingProxyType({"<end_of_turn>": 107, "<eos>": 1}),
)

# §2.9 — same markers, different ids (106 here); a base GGUF carries no template at all.
GEMMA3 = FamilyAdapter(
    name="gemma3",
    description="Gemma-3 (text model_type gemma3_text); Gemma template supplied if the tokenizer has none.",
    model_types=frozenset({"gemma3", "gemma3_text"}),
    architectures=frozenset({"Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"}),
    vocab_probes=("<start_of_turn>", "<end_of_turn>"),
    name_patterns=(r"(?i)gemma-3-.*",),
    priority=10,
    template_policy="fallback_if_missing",
    chat_template="gemma.jinja",
    system_strategy="merge_into_first_user",
    extra_stop_tokens=("<end_of_turn>", "<eos>"),
    expected_ids=MappingProxyType({"<end_of_turn>": 106, "<eos>": 1, "<bos>": 2}),
)

ALL_FAMILIES: tuple[FamilyAdapter, ...] = (
    GPT2,
    OPENELM,
    LLAMA2,
    QWEN2,
    DEEPSEEK_V2,
    PHI4,
    PHI3,
    SMOLLM2,
    LLAMA3,
    LLAMA31,
    MISTRAL,
    GEMMA2,
    GEMMA3,
    GENERIC,
)
