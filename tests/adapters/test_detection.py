"""Family detection (model-families.md §3): config model_type/architectures + vocabulary probes, then anchored
name patterns, then the generic adapter; an explicit --family always wins."""

from __future__ import annotations

import pytest

from adapters import AdapterRegistry, ChatNotSupportedError, PromptPipeline, UnknownFamilyError
from adapters.families import ALL_FAMILIES
from tests.adapters.helpers import USER_ONLY, fixture_json, fixture_tokenizer, gemma3_gguf
from tests.adapters.tiny_tokenizers import SPECS, tiny_tokenizer

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve(tokenizer, config, model_name: str = "", explicit: str | None = None) -> str:
    return AdapterRegistry().resolve(config=config, tokenizer=tokenizer, model_name=model_name, explicit=explicit).name


@pytest.mark.parametrize(
    ("config_from", "tokenizer_from", "family"),
    [
        ("gpt2", "gpt2", "gpt2"),
        ("openelm-270m", "llama2", "openelm"),  # OpenELM ships no tokenizer: Llama-2's is configured
        ("llama2", "llama2", "llama2"),
        ("qwen2.5-instruct", "qwen2.5-instruct", "qwen2"),
        ("phi4", "phi4", "phi4"),
        ("phi4-original", "phi4-original", "phi4"),  # model_type phi3, told apart by <|im_sep|>
        ("mistral-7b-instruct-v0.3", "mistral-7b-instruct-v0.3", "mistral"),
    ],
)
def test_fixture_resolves(config_from: str, tokenizer_from: str, family: str) -> None:
    config = fixture_json(config_from, "config.json")
    assert resolve(fixture_tokenizer(tokenizer_from), config, model_name="/models/renamed-folder") == family


@pytest.mark.parametrize("family", sorted(SPECS))
def test_tiny_family_resolves(family: str) -> None:
    """DeepSeek-V2, Llama-3 vs 3.1 vs SmolLM2 (all model_type llama), Gemma-2/3, Phi-3 vs Phi-4."""
    assert resolve(tiny_tokenizer(family), dict(SPECS[family].config), "/m/x") == family


def test_gemma3_gguf_resolves() -> None:
    tokenizer, config = gemma3_gguf()
    assert resolve(tokenizer, config) == "gemma3"
    assert resolve(tokenizer, {**config, "model_type": "gemma3"}) == "gemma3"  # multimodal checkpoints


def test_model_type_alone_is_not_enough() -> None:
    """A llama config with a Qwen vocabulary is neither SmolLM2, Llama-2 nor Llama-3."""
    llama_config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    assert resolve(fixture_tokenizer("qwen2.5-instruct"), llama_config) == "generic"
    phi3_config = {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}
    assert resolve(fixture_tokenizer("gpt2"), phi3_config) == "generic"


def test_name_patterns_are_a_last_resort() -> None:
    qwen = fixture_tokenizer("qwen2.5-instruct")
    assert resolve(qwen, {}, model_name="/models/Qwen2.5-0.5B-Instruct/") == "qwen2"
    assert resolve(qwen, {}, model_name="my-qwen2.5-finetune") == "generic"  # anchored, not a substring
    # a name never beats the vocabulary: a "gemma-3" folder holding a GPT-2 tokenizer is not Gemma
    assert resolve(fixture_tokenizer("gpt2"), {}, model_name="gemma-3-270m") == "generic"
    tokenizer, _ = gemma3_gguf()
    assert resolve(tokenizer, {}, model_name="gemma-3-270m-q4_k_m.gguf") == "gemma3"


def test_explicit_family_overrides_detection() -> None:
    qwen = fixture_tokenizer("qwen2.5-instruct")
    config = fixture_json("qwen2.5-instruct", "config.json")
    assert resolve(qwen, config, explicit="generic") == "generic"
    assert resolve(fixture_tokenizer("llama2"), {"model_type": "llama"}, explicit="openelm") == "openelm"


def test_unknown_explicit_family_raises() -> None:
    with pytest.raises(UnknownFamilyError) as excinfo:
        resolve(fixture_tokenizer("gpt2"), {}, explicit="gpt5")
    assert "gpt2" in str(excinfo.value) and excinfo.value.param == "family"


def test_registry_knows_every_family() -> None:
    assert AdapterRegistry().names() == sorted(f.name for f in ALL_FAMILIES)
    assert {
        "gpt2",
        "openelm",
        "qwen2",
        "deepseek_v2",
        "phi4",
        "phi3",
        "smollm2",
        "llama3",
        "llama3.1",
        "mistral",
        "gemma2",
        "gemma3",
        "generic",
    } <= set(AdapterRegistry().names())


def test_unknown_model_type_with_template_uses_it() -> None:
    tokenizer = tiny_tokenizer("smollm2", chat_template=CHATML)
    config = {"model_type": "mystery", "architectures": ["MysteryForCausalLM"]}
    adapter = AdapterRegistry().resolve(config=config, tokenizer=tokenizer)
    assert adapter.name == "generic"
    generic = PromptPipeline.build(tokenizer, adapter, config=config, generation_config={"eos_token_id": 2})
    assert generic.supports_chat and generic.template_source == "tokenizer"
    assert generic.render_chat(USER_ONLY) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert generic.stop_token_ids == {2}


def test_unknown_model_type_without_template_is_completion_only() -> None:
    tokenizer = tiny_tokenizer("smollm2", chat_template=False)
    config = {"model_type": "mystery"}
    adapter = AdapterRegistry().resolve(config=config, tokenizer=tokenizer)
    generic = PromptPipeline.build(tokenizer, adapter, config=config)
    assert adapter.name == "generic" and not generic.supports_chat
    assert generic.describe()["chat"] is False
    with pytest.raises(ChatNotSupportedError):
        generic.render_chat(USER_ONLY)
    with pytest.raises(ChatNotSupportedError):
        generic.encode_chat(USER_ONLY)
    assert generic.encode_prompt("Hi") == [tokenizer.convert_tokens_to_ids("Hi")]  # completions still work


def test_external_tokenizer_family_is_known_before_any_tokenizer() -> None:
    registry = AdapterRegistry()
    openelm = registry.external_tokenizer_family(config=fixture_json("openelm-270m", "config.json"))
    assert openelm is not None and openelm.name == "openelm" and openelm.trust_remote_code
    assert registry.external_tokenizer_family(config={"model_type": "llama"}, explicit="openelm") is openelm
    assert registry.external_tokenizer_family(config=fixture_json("qwen2.5-instruct", "config.json")) is None
    assert registry.external_tokenizer_family(config={"model_type": "openelm"}, explicit="qwen2") is None
