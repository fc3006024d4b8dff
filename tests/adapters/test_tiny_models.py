"""Tiny model directories load and generate on CPU (the server tests build on tiny_models.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.adapters.helpers import USER_ONLY, pipeline
from tests.adapters.tiny_models import ALL_TINY_FAMILIES, build_family_model, fixture_dir


def _load_and_generate(model_dir: Path, tokenizer_dir: Path, explicit: str | None = None) -> tuple[str, list]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((model_dir / "config.json").read_text())
    generation_config = json.loads((model_dir / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    built = pipeline(tokenizer, config, generation_config, model_name=model_dir.name, explicit=explicit)
    ids = built.encode_chat(USER_ONLY) if built.supports_chat else built.encode_prompt("Hi")
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=3,
            min_new_tokens=3,
            do_sample=False,
            eos_token_id=sorted(built.stop_token_ids),
            pad_token_id=built.pad_token_id,
        )
    assert config["vocab_size"] == model.config.vocab_size >= len(tokenizer.get_vocab())
    return built.adapter.name, out[0, len(ids) :].tolist()


def test_tiny_qwen2_loads_and_generates(tmp_path: Path) -> None:
    model_dir = build_family_model("qwen2", tmp_path / "qwen2")
    assert json.loads((model_dir / "config.json").read_text())["vocab_size"] == 151936  # the real one
    family, new_tokens = _load_and_generate(model_dir, model_dir)
    assert family == "qwen2" and len(new_tokens) == 3


def test_openelm_standin_has_no_tokenizer_and_uses_llama2(tmp_path: Path) -> None:
    model_dir = build_family_model("openelm", tmp_path / "openelm")
    assert not any(p.name.startswith("tokenizer") for p in model_dir.iterdir())
    family, new_tokens = _load_and_generate(model_dir, fixture_dir("llama2"), explicit="openelm")
    assert family == "openelm" and len(new_tokens) == 3


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in ALL_TINY_FAMILIES if f != "openelm"])
def test_every_tiny_family_loads_resolves_and_generates(tmp_path: Path, family: str) -> None:
    model_dir = build_family_model(family, tmp_path / family)
    resolved, new_tokens = _load_and_generate(model_dir, model_dir)
    assert resolved == {"phi4-original": "phi4"}.get(family, family)
    assert len(new_tokens) == 3
