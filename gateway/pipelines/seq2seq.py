"""translation / summarization / text2text-generation: transformers 5 dropped these pipelines, so this runs
them the way transformers 4's did (encoder-decoder `generate`, outputs `[{"translation_text": …}]`,
`[{"summary_text": …}]`, `[{"generated_text": …}]`), called like a pipeline: `runner(inputs, **parameters)`."""

from __future__ import annotations

from typing import Any

import torch

from gateway.pipelines.tasks import SEQ2SEQ_TASKS

# Parameters that shape the tokenization or the decoding rather than `generate`.
_TOKENIZE = ("truncation", "max_length_input")
_DECODE = ("clean_up_tokenization_spaces", "return_tensors", "return_text")


class Seq2SeqRunner:
    def __init__(self, task: str, model: Any, tokenizer: Any, device: torch.device) -> None:
        self.task = task
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.output_key = SEQ2SEQ_TASKS[task]
        if tokenizer.pad_token is None:  # GPT-2-style vocabularies have none; padding a batch needs one
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def load(cls, task: str, source: str, *, device: torch.device, dtype: torch.dtype, **common: Any) -> Seq2SeqRunner:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForSeq2SeqLM.from_pretrained(source, dtype=dtype, **common).to(device).eval()
        return cls(task, model, tokenizer, device)

    def prefix(self, src_lang: str | None, tgt_lang: str | None) -> str:
        """T5-style task prefix from the model config (`task_specific_params`), as transformers 4 added it."""
        specific = getattr(self.model.config, "task_specific_params", None) or {}
        key = f"translation_{src_lang}_to_{tgt_lang}" if self.task == "translation" else self.task
        prefix = (specific.get(key) or {}).get("prefix")
        if prefix is None:
            prefix = getattr(self.model.config, "prefix", None)
        return prefix or ""

    def __call__(self, inputs: str | list[str], batch_size: int | None = None, **params: Any) -> Any:
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("`inputs` must be a string or a list of strings")
        src_lang, tgt_lang = params.pop("src_lang", None), params.pop("tgt_lang", None)
        truncation = params.pop("truncation", True)
        clean = params.pop("clean_up_tokenization_spaces", False)
        for unused in (*_TOKENIZE, *_DECODE):
            params.pop(unused, None)
        for nested in ("generate_kwargs", "generate_parameters"):  # transformers 4's and huggingface_hub's nesting
            params.update(params.pop(nested, None) or {})
        _check_bounds(params)
        prefix = self.prefix(src_lang, tgt_lang)
        size = batch_size or len(texts)
        outputs: list[list[dict[str, str]]] = []
        for start in range(0, len(texts), size):
            outputs.extend(self._generate([prefix + t for t in texts[start : start + size]], truncation, clean, params))
        if single:
            return outputs[0]
        if all(len(out) == 1 for out in outputs):
            return [out[0] for out in outputs]
        return outputs

    @torch.inference_mode()
    def _generate(self, texts: list[str], truncation: Any, clean: bool, params: dict[str, Any]) -> list[list[dict]]:
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=truncation)
        encoded = {k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
        generated = self.model.generate(**encoded, **params)
        per_input = generated.shape[0] // len(texts)  # num_return_sequences
        decoded = self.tokenizer.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=clean)
        return [
            [{self.output_key: text} for text in decoded[i * per_input : (i + 1) * per_input]]
            for i in range(len(texts))
        ]


# Bounds on what a request may ask `generate` for: past them one request holds the model for minutes.
GENERATE_BOUNDS = {"max_new_tokens": 2048, "max_length": 2048, "num_beams": 16, "num_return_sequences": 16}


def _check_bounds(params: dict[str, Any]) -> None:
    for key, bound in GENERATE_BOUNDS.items():
        value = params.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= bound):
            raise ValueError(f"`{key}` must be an integer from 1 to {bound}")
