"""The real Gemma-3-270M base GGUF (installed package): no chat template, so the adapter supplies one."""

from __future__ import annotations

from tests.adapters.helpers import SYSTEM_USER, gemma3_gguf, pipeline


def test_gemma3_270m_gguf_end_to_end_prompt() -> None:
    tokenizer, config = gemma3_gguf()
    gemma = pipeline(tokenizer, config, model_name="gemma-3-270m-q4_k_m.gguf")
    assert gemma.adapter.name == "gemma3"
    assert gemma.template_source == "adapter gemma3 (tokenizer has none)"

    text = gemma.render_chat(SYSTEM_USER)
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n")  # system folded
    assert "system" not in text and text.endswith("<start_of_turn>model\n")

    vocab = tokenizer.get_vocab()
    assert (vocab["<start_of_turn>"], vocab["<end_of_turn>"]) == (105, 106)  # not Gemma-2's 106/107
    assert {1, 106} <= gemma.stop_token_ids and gemma.eos_token_id == 1

    ids = gemma.encode_chat(SYSTEM_USER)
    assert ids[:2] == [2, 105] and ids.count(2) == 1  # one <bos>, then <start_of_turn>
    assert ids[-3] == 105  # ... <start_of_turn> model \n
