"""Beam search for one request: transformers' own `generate(num_beams=…)`, not a hand-written search.

Both engines call this from the one thread that already owns the model (the batched engine's scheduler
thread between two steps, the simple engine's worker), so no other forward pass runs on the model while it
does. The result is one delta: the best beam is only known at the end, so a beam request cannot stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from gateway.engine.types import GenerationDelta, GenerationRequest


class _EachStep(StoppingCriteria):
    """Called after every step: ends every beam once the client left or the engine closes, and runs the
    engine's step hook (the batched engine tunes its thread count per step there)."""

    def __init__(self, cancelled: Callable[[], bool], on_step: Callable[[], None] | None) -> None:
        self.cancelled = cancelled
        self.on_step = on_step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if self.on_step is not None:
            self.on_step()
        return torch.full((input_ids.shape[0],), self.cancelled(), dtype=torch.bool, device=input_ids.device)


def run_beam_search(
    model: Any,
    tokenizer: Any,
    request: GenerationRequest,
    *,
    pad_token_id: int | None,
    cancelled: Callable[[], bool],
    on_step: Callable[[], None] | None = None,
) -> GenerationDelta:
    """The best beam's new tokens (through the first stop token) as one finishing delta."""
    params = request.params
    device = next(model.parameters()).device
    input_ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=device)
    stop_ids = sorted(params.stop_token_ids)
    if params.max_new_tokens <= 0:
        return GenerationDelta(finish_reason="length")
    config = GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        num_beams=params.num_beams,
        no_repeat_ngram_size=params.no_repeat_ngram_size,
        early_stopping=params.early_stopping,
        length_penalty=params.length_penalty,
        repetition_penalty=params.repetition_penalty,
        do_sample=False,
        eos_token_id=stop_ids or None,
        # transformers pads finished beams with it (and warns without one); never part of the answer
        pad_token_id=pad_token_id if pad_token_id is not None else (stop_ids[0] if stop_ids else 0),
    )
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        generation_config=config,
        stopping_criteria=StoppingCriteriaList([_EachStep(cancelled, on_step)]),
    )
    new = [int(t) for t in output[0, input_ids.shape[1] :].tolist()]
    if cancelled():
        return GenerationDelta(token_ids=new, finish_reason="abort")
    for i, token in enumerate(new):
        if token in params.stop_token_ids:  # the rest is padding of a finished beam
            ids = new[: i + 1]
            text = tokenizer.decode(new[:i], skip_special_tokens=params.skip_special_tokens)
            return GenerationDelta(text=text, token_ids=ids, finish_reason="stop")
    finish = "length" if len(new) >= params.max_new_tokens else "stop"
    return GenerationDelta(
        text=tokenizer.decode(new, skip_special_tokens=params.skip_special_tokens), token_ids=new, finish_reason=finish
    )
