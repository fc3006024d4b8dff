"""Tiny, loadable model directories per family, for tests that must load a real model on CPU in seconds.

A directory holds config.json (the family's architecture with 2 layers and a tiny hidden size but the
REAL vocab size and special-token ids), random weights (`AutoModelForCausalLM.from_config` +
`save_pretrained`), the tokenizer files (a shared fixture's, or a tiny stand-in's) and generation_config.json.
Nothing is downloaded.

    from tests.adapters.tiny_models import build_family_model
    model_dir = build_family_model("qwen2", tmp_path / "qwen2")
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

# Files of a fixture directory that are not the tokenizer (provenance, licences, model configs).
_NOT_TOKENIZER = {"config.json", "generation_config.json", "SOURCE.md", "LICENSE", "LICENSE.txt", "params.json"}

# Per model_type: the smallest shapes the architecture accepts. Everything else keeps its defaults.
_COMMON = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
TINY_DIMS: dict[str, dict[str, Any]] = {
    "llama": dict(_COMMON),
    "mistral": dict(_COMMON),
    "qwen2": dict(_COMMON),
    "phi3": dict(_COMMON),
    "gemma": {**_COMMON, "head_dim": 8},
    "gemma2": {**_COMMON, "head_dim": 8},
    "gemma3_text": {**_COMMON, "head_dim": 8},
    "gpt2": {"n_embd": 16, "n_layer": 2, "n_head": 2},
    "deepseek_v2": {
        **_COMMON,
        "num_key_value_heads": 2,
        "moe_intermediate_size": 8,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 8,
        "q_lora_rank": None,
        "qk_rope_head_dim": 4,
        "qk_nope_head_dim": 4,
        "v_head_dim": 8,
        "n_group": 1,
        "topk_group": 1,
    },
}
# config.json keys carried over from the real model: they must match the tokenizer, not the tiny shapes.
_CARRIED = (
    "model_type",
    "architectures",
    "vocab_size",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
)


def fixture_dir(name: str) -> Path:
    """A tokenizer fixture directory under tests/fixtures/tokenizers/ (in the repository)."""
    path = REPO_ROOT / "tests" / "fixtures" / "tokenizers" / name
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer fixture {path} is missing from the repository")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def build_tiny_model(
    tokenizer_source: str | Path | Any | None,
    out_dir: str | Path,
    architecture_config_overrides: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    generation_config: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a loadable tiny model directory and return it.

    tokenizer_source: a fixture directory (its tokenizer files are copied, and its config.json /
    generation_config.json supply the ids), a tokenizer object (`save_pretrained`), or None (no tokenizer
    files: for families whose checkpoints ship none). `config` must name `model_type` when the source has
    no config.json; `architecture_config_overrides` are applied last.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source_dir = Path(tokenizer_source) if isinstance(tokenizer_source, (str, Path)) else None
    base = dict(config) if config is not None else {}
    if config is None and source_dir is not None:
        base = _read_json(source_dir / "config.json")
    if "model_type" not in base:
        raise ValueError("build_tiny_model needs a config with model_type (or a fixture with config.json)")
    model_type = base["model_type"]
    kwargs = {key: base[key] for key in _CARRIED if key in base and key != "model_type"}
    kwargs.update(TINY_DIMS.get(model_type, {}))
    kwargs.update(architecture_config_overrides or {})
    model_config = AutoConfig.for_model(model_type, **kwargs)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config)
    model.save_pretrained(out)

    generation = dict(generation_config) if generation_config is not None else {}
    if generation_config is None and source_dir is not None:
        generation = _read_json(source_dir / "generation_config.json")
    if not generation:  # the ids the model config declares, as from_model_config would
        generation = {k: base[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in base}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")

    if source_dir is not None:
        for item in source_dir.iterdir():
            if item.is_file() and item.name not in _NOT_TOKENIZER:
                shutil.copyfile(item, out / item.name)  # copyfile: the fixtures are read-only
    elif tokenizer_source is not None:
        tokenizer_source.save_pretrained(out)
    return out


# OpenELM's remote modelling code cannot be fetched offline (and breaks under transformers 5.x, §2.2), so its
# tiny model is a NATIVE Llama stand-in with OpenELM's vocabulary (the Llama-2 one, 32000) and ids, and NO
# tokenizer files, exactly like a real OpenELM checkpoint: serve it with the llama2 fixture as the external
# tokenizer and `--family openelm` (detection from this config alone says llama).
OPENELM_STANDIN_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32000,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": True,
}

# family -> fixture directory name (families with a real tokenizer fixture).
FIXTURE_FAMILIES = {
    "gpt2": "gpt2",
    "llama2": "llama2",
    "qwen2": "qwen2.5-instruct",
    "phi4": "phi4",
    "phi4-original": "phi4-original",
    "mistral": "mistral-7b-instruct-v0.3",
}


def build_family_model(family: str, out_dir: str | Path, **overrides: Any) -> Path:
    """A tiny model for a family name: fixture tokenizers where they exist, tiny stand-ins otherwise."""
    if family in FIXTURE_FAMILIES:
        return build_tiny_model(fixture_dir(FIXTURE_FAMILIES[family]), out_dir, overrides)
    if family == "openelm":
        generation = _read_json(fixture_dir("openelm-270m") / "generation_config.json")
        return build_tiny_model(None, out_dir, overrides, config=OPENELM_STANDIN_CONFIG, generation_config=generation)
    from tests.adapters.tiny_tokenizers import SPECS, build_tiny_tokenizer

    spec = SPECS[family]
    return build_tiny_model(
        build_tiny_tokenizer(spec),
        out_dir,
        overrides,
        config={**spec.config, "vocab_size": spec.vocab_size},
        generation_config=spec.generation_config,
    )


ALL_TINY_FAMILIES = (
    *FIXTURE_FAMILIES,
    "openelm",
    "deepseek_v2",
    "llama3",
    "llama3.1",
    "gemma2",
    "gemma3",
    "phi3",
    "smollm2",
)
