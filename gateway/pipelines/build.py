"""Build the object a pipeline entry calls: transformers.pipeline(), or our runner for a dropped task."""

from __future__ import annotations

from typing import Any

import torch

from gateway.engine.loader import resolve_device
from gateway.pipelines.tasks import SEQ2SEQ_TASKS, Task
from gateway.specs import PipelineSpec


def pipeline_dtype(requested: str, device: torch.device) -> torch.dtype:
    """auto: float32 on CPU (the reference outputs; pipelines are small), float16/bfloat16 on a GPU."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def build_pipeline(spec: PipelineSpec, task: Task) -> Any:
    device = resolve_device(spec.device)
    dtype = pipeline_dtype(spec.dtype, device)
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    if task.name in SEQ2SEQ_TASKS:
        from gateway.pipelines.seq2seq import Seq2SeqRunner

        return Seq2SeqRunner.load(task.name, spec.source, device=device, dtype=dtype, **common)
    if task.name == "question-answering":
        from gateway.pipelines.qa import QuestionAnsweringRunner

        return QuestionAnsweringRunner.load(spec.source, device=device, dtype=dtype, **common)
    from transformers import pipeline

    return pipeline(task.name, model=spec.source, device=device, dtype=dtype, **common)
