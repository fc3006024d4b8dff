"""question-answering: transformers 5 dropped the pipeline, so this runs extractive QA the way
transformers 4's did (softmax over start and end logits of the context tokens, the best span up to
`max_answer_len` tokens), answering `{"score", "start", "end", "answer"}` with character offsets.
Called like a pipeline: `runner({"question": …, "context": …}, **parameters)` or with a list of those.
Unlike transformers 4, a context longer than `max_seq_len` is truncated, not split into strided windows."""

from __future__ import annotations

from typing import Any

import torch


class QuestionAnsweringRunner:
    def __init__(self, model: Any, tokenizer: Any, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device

    @classmethod
    def load(cls, source: str, *, device: torch.device, dtype: torch.dtype, **common: Any) -> QuestionAnsweringRunner:
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForQuestionAnswering.from_pretrained(source, dtype=dtype, **common).to(device).eval()
        return cls(model, tokenizer, device)

    def __call__(
        self,
        inputs: dict | list[dict] | None = None,
        *,
        question: str | None = None,
        context: str | None = None,
        top_k: int = 1,
        max_answer_len: int = 15,
        max_seq_len: int = 384,
        batch_size: int | None = None,
        **unused: Any,
    ) -> Any:
        if inputs is None:
            inputs = {"question": question, "context": context}
        items = [inputs] if isinstance(inputs, dict) else list(inputs)
        for item in items:
            if not isinstance(item, dict) or not all(
                isinstance(item.get(k), str) and item[k] for k in ("question", "context")
            ):
                raise ValueError("each input must be an object with non-empty `question` and `context` strings")
        if top_k < 1 or max_answer_len < 1:
            raise ValueError("`top_k` and `max_answer_len` must be at least 1")
        answers = [
            self._answer(item["question"], item["context"], top_k, max_answer_len, max_seq_len) for item in items
        ]
        answers = [found[0] if top_k == 1 else found for found in answers]
        return answers[0] if isinstance(inputs, dict) else answers

    @torch.inference_mode()
    def _answer(self, question: str, context: str, top_k: int, max_answer_len: int, max_seq_len: int) -> list[dict]:
        encoded = self.tokenizer(
            question,
            context,
            truncation="only_second",
            max_length=max_seq_len,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = encoded.pop("offset_mapping")[0].tolist()
        in_context = torch.tensor([sid == 1 for sid in encoded.sequence_ids(0)])
        out = self.model(**{k: v.to(self.device) for k, v in encoded.items()})
        start = out.start_logits[0].float().cpu().masked_fill(~in_context, -10_000.0).softmax(-1)
        end = out.end_logits[0].float().cpu().masked_fill(~in_context, -10_000.0).softmax(-1)
        # P(start=i) · P(end=j) for i ≤ j < i + max_answer_len
        spans = torch.triu(start[:, None] * end[None, :]).tril(max_answer_len - 1)
        best = torch.topk(spans.flatten(), min(top_k, int((spans > 0).sum()) or 1))
        answers = []
        for score, flat in zip(best.values.tolist(), best.indices.tolist(), strict=True):
            i, j = divmod(flat, spans.shape[1])
            char_start, char_end = offsets[i][0], offsets[j][1]
            answers.append(
                {"score": score, "start": char_start, "end": char_end, "answer": context[char_start:char_end]}
            )
        return answers
