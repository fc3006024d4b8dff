"""Golden prompts: the exact text every family's model receives, written out literally.

Each expected string is derived by hand from the published template (the fixture's tokenizer_config, or the
reference text in reference_templates.py / shared/docs/model-families.md §2) — never by calling the pipeline.
Conversations (helpers.py): system "Be brief." + user "Hi"; user "Hi" alone; and system, user "Hi",
assistant "Hello!", user "How are you?".
"""

from __future__ import annotations

import pytest

from adapters import ChatNotSupportedError, TemplateRenderError
from tests.adapters import reference_templates as ref
from tests.adapters.helpers import CONVERSATIONS, fixture_pipeline, gemma3_gguf, pipeline, tiny_pipeline

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LLAMA31_HEADER = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
)
DS_BOS, DS_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

# Gemma-2 and Gemma-3 render the same text (only the ids of the markers differ); the system turn is merged
# into the first user turn with a blank line, as llama.cpp's gemma test expects.
GEMMA = {
    "system_user": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n",
    "user_only": "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "multi_turn": (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nHow are you?<end_of_turn>\n<start_of_turn>model\n"
    ),
}
PHI4 = {
    "system_user": (
        "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
        "<|im_start|>assistant<|im_sep|>"
    ),
    "user_only": "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>",
    "multi_turn": (
        "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
        "<|im_start|>assistant<|im_sep|>Hello!<|im_end|><|im_start|>user<|im_sep|>How are you?<|im_end|>"
        "<|im_start|>assistant<|im_sep|>"
    ),
}

GOLDEN = {
    "openelm": (
        lambda: fixture_pipeline("openelm-270m", tokenizer_from="llama2"),
        {
            "system_user": "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n",
            "user_only": "<|user|>\nHi</s>\n<|assistant|>\n",
            "multi_turn": (
                "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n"
                "<|user|>\nHow are you?</s>\n<|assistant|>\n"
            ),
        },
    ),
    "qwen2.5": (
        lambda: fixture_pipeline("qwen2.5-instruct"),
        {
            "system_user": (
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            ),
            "user_only": (
                f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                "<|im_start|>assistant\n"
            ),
            "multi_turn": (
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
                "<|im_start|>assistant\n"
            ),
        },
    ),
    # Qwen2 (not 2.5) ships a simpler template: served here as the operator's --chat-template.
    "qwen2": (
        lambda: fixture_pipeline("qwen2.5-instruct", chat_template_override=ref.QWEN2),
        {
            "system_user": (
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            ),
            "user_only": (
                "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                "<|im_start|>assistant\n"
            ),
            "multi_turn": (
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
                "<|im_start|>assistant\n"
            ),
        },
    ),
    "deepseek_v2": (
        lambda: tiny_pipeline("deepseek_v2"),
        {  # no space after the final "Assistant:" (DeepSeek-Coder-V2 README)
            "system_user": f"{DS_BOS}Be brief.\n\nUser: Hi\n\nAssistant:",
            "user_only": f"{DS_BOS}User: Hi\n\nAssistant:",
            "multi_turn": (
                f"{DS_BOS}Be brief.\n\nUser: Hi\n\nAssistant: Hello!{DS_EOS}User: How are you?\n\nAssistant:"
            ),
        },
    ),
    "phi4": (lambda: fixture_pipeline("phi4"), PHI4),
    "phi4-original": (lambda: fixture_pipeline("phi4-original"), PHI4),
    "phi3": (
        lambda: tiny_pipeline("phi3"),
        {
            "system_user": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n",
            "user_only": "<|user|>\nHi<|end|>\n<|assistant|>\n",
            "multi_turn": (
                "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
                "<|user|>\nHow are you?<|end|>\n<|assistant|>\n"
            ),
        },
    ),
    "smollm2": (
        lambda: tiny_pipeline("smollm2"),
        {
            "system_user": (
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            ),
            "user_only": (
                "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            ),
            "multi_turn": (
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
                "<|im_start|>assistant\n"
            ),
        },
    ),
    "llama3": (
        lambda: tiny_pipeline("llama3"),
        {
            "system_user": (
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            "user_only": (
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            "multi_turn": (
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
        },
    ),
    "llama3.1": (
        lambda: tiny_pipeline("llama3.1"),
        {
            "system_user": (
                f"{LLAMA31_HEADER}Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            "user_only": (
                f"{LLAMA31_HEADER}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            "multi_turn": (
                f"{LLAMA31_HEADER}Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
        },
    ),
    # The fixture's May-2024 template raises on a system role; the adapter folds it into the first [INST].
    "mistral": (
        lambda: fixture_pipeline("mistral-7b-instruct-v0.3"),
        {
            "system_user": "<s>[INST] Be brief.\n\nHi [/INST]",
            "user_only": "<s>[INST] Hi [/INST]",
            "multi_turn": "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] How are you? [/INST]",
        },
    ),
    "gemma2": (lambda: tiny_pipeline("gemma2"), GEMMA),
    "gemma2-no-template": (lambda: tiny_pipeline("gemma2", chat_template=False), GEMMA),
    "gemma3": (lambda: tiny_pipeline("gemma3"), GEMMA),
    # Llama-2-chat's template on the real Llama-2 tokenizer (as --chat-template): BOS before each [INST].
    "llama2-chat": (
        lambda: fixture_pipeline("llama2", chat_template_override=ref.LLAMA2_CHAT),
        {
            "system_user": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]",
            "user_only": "<s>[INST] Hi [/INST]",
            "multi_turn": (
                "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] How are you? [/INST]"
            ),
        },
    ),
    # GPT-2 has no template: only with the operator's plain-concatenation opt-in.
    "gpt2-plain": (
        lambda: fixture_pipeline("gpt2", allow_plain_chat=True),
        {
            "system_user": "Be brief.\nHi\n",
            "user_only": "Hi\n",
            "multi_turn": "Be brief.\nHi\nHello!\nHow are you?\n",
        },
    ),
}


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_prompt(case: str, conversation: str) -> None:
    build, expected = GOLDEN[case]
    assert build().render_chat(CONVERSATIONS[conversation]) == expected[conversation]


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_gemma3_base_gguf_gets_the_gemma_template(conversation: str) -> None:
    tokenizer, config = gemma3_gguf()
    assert not tokenizer.chat_template  # the base GGUF carries none: the adapter's fallback is used
    assert pipeline(tokenizer, config).render_chat(CONVERSATIONS[conversation]) == GEMMA[conversation]


def test_gpt2_is_completion_only_by_default() -> None:
    gpt2 = fixture_pipeline("gpt2")
    assert gpt2.adapter.name == "gpt2" and not gpt2.supports_chat
    with pytest.raises(ChatNotSupportedError):
        gpt2.render_chat(CONVERSATIONS["user_only"])


def test_phi4_continuation_has_no_dangling_header() -> None:
    """The original Phi-4 template adds the assistant header after every user turn; the adapter's does not."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    for name in ("phi4", "phi4-original"):
        rendered = fixture_pipeline(name).render_chat(messages, add_generation_prompt=False)
        assert rendered == ("<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>Hello!<|im_end|>")


def test_qwen25_tool_round_trip() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    qwen = fixture_pipeline("qwen2.5-instruct")
    rendered = qwen.render_chat(messages, tools=tools)
    assert rendered.endswith(
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    assert rendered.startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}\n\n# Tools\n")
    assert qwen.tool_parser == "hermes"


def test_llama31_template_kwargs_and_tools() -> None:
    llama = tiny_pipeline("llama3.1")
    dated = llama.render_chat(CONVERSATIONS["user_only"], template_kwargs={"date_string": "01 Jan 2025"})
    assert "Today Date: 01 Jan 2025\n\n" in dated
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with_tools = llama.render_chat(CONVERSATIONS["user_only"], tools=tools)
    assert with_tools.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
    )
    assert llama.tool_parser == "llama3_json"


def test_shipped_templates_match_their_references() -> None:
    """The adapter's template files are the published ones (a header comment aside)."""
    from adapters.pipeline import load_template

    assert load_template("openelm.jinja").split("\n", 1)[1] == ref.ZEPHYR
    phi4_fixed = fixture_pipeline("phi4").tokenizer.chat_template
    assert load_template("phi4.jinja").split("\n", 1)[1] == phi4_fixed


def test_template_refusals_are_typed_errors() -> None:
    """A system role never reaches Mistral's template; roles it cannot render become a TemplateRenderError."""
    mistral = fixture_pipeline("mistral-7b-instruct-v0.3")
    assert mistral.render_chat([{"role": "system", "content": "Be brief."}]) == "<s>[INST] Be brief. [/INST]"
    with pytest.raises(TemplateRenderError, match="Only user and assistant roles"):
        mistral.render_chat([{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"}])
