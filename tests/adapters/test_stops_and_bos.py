"""Stop-id union, pad choice, BOS de-duplication and load-time id checks (model-families.md §1, §4)."""

from __future__ import annotations

import logging

import pytest

from tests.adapters import reference_templates as ref
from tests.adapters.helpers import (
    MULTI_TURN,
    USER_ONLY,
    fixture_json,
    fixture_pipeline,
    fixture_tokenizer,
    gemma3_gguf,
    pipeline,
    tiny_pipeline,
)
from tests.adapters.tiny_tokenizers import SPECS, tiny_tokenizer

# family case -> (pipeline factory, expected stop ids, expected pad id)
CASES = {
    "gpt2": (lambda: fixture_pipeline("gpt2"), {50256}, 50256),
    "openelm": (lambda: fixture_pipeline("openelm-270m", tokenizer_from="llama2"), {2}, 0),
    "llama2": (lambda: fixture_pipeline("llama2"), {2}, 0),
    "qwen2": (lambda: fixture_pipeline("qwen2.5-instruct"), {151645, 151643}, 151643),
    "phi4": (lambda: fixture_pipeline("phi4"), {100265, 100257}, 100349),
    "phi4-original": (lambda: fixture_pipeline("phi4-original"), {100265, 100257}, 100349),
    "mistral": (lambda: fixture_pipeline("mistral-7b-instruct-v0.3"), {2}, 2),
    "deepseek_v2": (lambda: tiny_pipeline("deepseek_v2"), {100001}, 100001),
    "llama3": (lambda: tiny_pipeline("llama3"), {128001, 128009}, 128001),
    "llama3.1": (lambda: tiny_pipeline("llama3.1"), {128001, 128008, 128009}, 128004),
    "gemma2": (lambda: tiny_pipeline("gemma2"), {1, 107}, 0),
    "gemma3": (lambda: tiny_pipeline("gemma3"), {1, 106}, 0),
    "gemma3-gguf": (lambda: pipeline(*gemma3_gguf()), {1, 106}, 0),
    "phi3": (lambda: tiny_pipeline("phi3"), {32000, 32001, 32007}, 32000),
    "smollm2": (lambda: tiny_pipeline("smollm2"), {2}, 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stop_set_and_pad(case: str) -> None:
    build, stops, pad = CASES[case]
    built = build()
    assert built.stop_token_ids == stops
    assert built.pad_token_id == pad
    assert built.id_mismatches == {}  # every expected id matched the real (or real-id) vocabulary
    assert built.describe()["stop_token_ids"] == sorted(stops)


def test_phi4_original_tokenizer_gets_the_eos_override() -> None:
    original = fixture_pipeline("phi4-original")
    assert original.tokenizer.eos_token_id == 100257  # the buggy release
    assert original.eos_token_id == 100265 and 100265 in original.stop_token_ids
    assert original.pad_token_id not in original.stop_token_ids
    # even without a generation_config listing 100265, the record adds it; the generic adapter cannot
    config = fixture_json("phi4-original", "config.json")
    tokenizer = fixture_tokenizer("phi4-original")
    assert pipeline(tokenizer, config).stop_token_ids == {100257, 100265}
    assert pipeline(tokenizer, config, explicit="generic").stop_token_ids == {100257}


def test_stop_ids_do_not_depend_on_generation_config_fixes() -> None:
    """The historical non-stopping configs (Qwen base, Llama-3 April 2024, early Gemma-2) still stop."""
    qwen = fixture_tokenizer("qwen2.5-instruct")
    assert pipeline(qwen, {"model_type": "qwen2", "eos_token_id": 151643}, {"eos_token_id": 151643}).stop_token_ids == {
        151643,
        151645,
    }
    fixed_llama3 = pipeline(tiny_tokenizer("llama3"), dict(SPECS["llama3"].config), {"eos_token_id": [128001, 128009]})
    assert fixed_llama3.stop_token_ids == {128001, 128009}
    assert tiny_pipeline("gemma2").stop_token_ids == {1, 107}  # its generation_config lists only 1
    phi3 = pipeline(tiny_tokenizer("phi3"), dict(SPECS["phi3"].config))  # no generation_config at all
    assert phi3.stop_token_ids == {32000, 32007}


# Families whose template emits BOS and whose tokenizer adds one too (§1.1).
DOUBLE_BOS_RISK = {
    "deepseek_v2": lambda: tiny_pipeline("deepseek_v2"),
    "llama3": lambda: tiny_pipeline("llama3"),
    "llama3.1": lambda: tiny_pipeline("llama3.1"),
    "mistral": lambda: fixture_pipeline("mistral-7b-instruct-v0.3"),
    "gemma2": lambda: tiny_pipeline("gemma2"),
    "gemma3": lambda: tiny_pipeline("gemma3"),
    "gemma3-gguf": lambda: pipeline(*gemma3_gguf()),
}


@pytest.mark.parametrize("case", sorted(DOUBLE_BOS_RISK))
def test_no_double_bos(case: str) -> None:
    built = DOUBLE_BOS_RISK[case]()
    bos = built.tokenizer.bos_token_id
    naive = built.tokenizer.encode(built.render_chat(USER_ONLY))  # add_special_tokens=True on template text
    assert naive[:2] == [bos, bos], "the fixture must reproduce the risk for this test to mean anything"
    assert built.template_adds_bos
    for messages in (USER_ONLY, MULTI_TURN):
        ids = built.encode_chat(messages)
        assert ids[0] == bos and ids[1] != bos and ids.count(bos) == 1


def test_single_bos_when_only_the_tokenizer_adds_it() -> None:
    openelm = fixture_pipeline("openelm-270m", tokenizer_from="llama2")
    assert not openelm.template_adds_bos
    ids = openelm.encode_chat(USER_ONLY)
    assert ids[0] == 1 and ids[1] != 1 and ids.count(1) == 1


def test_no_bos_for_families_without_one() -> None:
    for built in (fixture_pipeline("qwen2.5-instruct"), fixture_pipeline("phi4")):
        assert not built.template_adds_bos
        ids = built.encode_chat(USER_ONLY)
        assert built.tokenizer.bos_token_id not in ids


def test_llama2_chat_keeps_the_templates_own_per_turn_bos() -> None:
    chat = fixture_pipeline("llama2", chat_template_override=ref.LLAMA2_CHAT)
    ids = chat.encode_chat(MULTI_TURN)
    assert ids[:2] != [1, 1] and ids[0] == 1 and ids.count(1) == 2  # one per [INST], none doubled


def test_completion_prompts_get_exactly_one_bos() -> None:
    llama2 = fixture_pipeline("llama2")
    assert llama2.encode_prompt("Hi")[0] == 1
    ids = llama2.encode_prompt("<s>Hi")  # a client that already wrote the BOS
    assert ids[0] == 1 and ids[1] != 1
    assert 50256 not in fixture_pipeline("gpt2").encode_prompt("Hi")  # GPT-2 adds none


def test_decode_skips_special_tokens() -> None:
    qwen = fixture_pipeline("qwen2.5-instruct")
    ids = qwen.encode_chat(USER_ONLY)
    assert "<|im_start|>" not in qwen.decode(ids)
    assert qwen.decode(ids, skip_special_tokens=False).startswith("<|im_start|>system")


def test_expected_id_mismatch_is_warned_and_described(caplog: pytest.LogCaptureFixture) -> None:
    qwen = fixture_tokenizer("qwen2.5-instruct")
    with caplog.at_level(logging.WARNING, logger="adapters.pipeline"):
        wrong = pipeline(qwen, fixture_json("qwen2.5-instruct", "config.json"), explicit="phi4")
    assert "expects <|im_end|> to be id 100265 but the tokenizer has 151645" in caplog.text
    described = wrong.describe()
    assert described["id_mismatches"]["<|im_end|>"] == {"expected": 100265, "actual": 151645}
    assert described["id_mismatches"]["<|dummy_85|>"] == {"expected": 100349, "actual": None}


def test_describe_exposes_the_loader_facts() -> None:
    openelm = fixture_pipeline("openelm-270m", tokenizer_from="llama2").describe()
    assert openelm["family"] == "openelm"
    assert openelm["trust_remote_code"] is True and openelm["needs_external_tokenizer"] is True
    assert openelm["template_source"] == "adapter openelm" and openelm["stop_strings"] == ["<|user|>"]
    assert openelm["expected_ids"] == {"</s>": 2, "<unk>": 0} and openelm["id_mismatches"] == {}
    gemma = pipeline(*gemma3_gguf()).describe()
    assert gemma["template_source"] == "adapter gemma3 (tokenizer has none)"
    assert gemma["system_strategy"] == "merge_into_first_user" and gemma["template_adds_bos"] is True


def test_tool_parser_follows_the_template() -> None:
    assert fixture_pipeline("qwen2.5-instruct").tool_parser == "hermes"
    assert fixture_pipeline("qwen2.5-instruct", chat_template_override=ref.QWEN2).tool_parser is None
    assert fixture_pipeline("mistral-7b-instruct-v0.3").tool_parser is None  # May-2024 template: no tools
    assert tiny_pipeline("llama3").tool_parser is None
    assert tiny_pipeline("llama3.1").tool_parser == "llama3_json"
