"""Task names and the per-task rules of a pipeline's output (no torch here)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PIPELINE = "pipeline"
ASR = "automatic-speech-recognition"

ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
_TRANSLATION = re.compile(r"^translation_(?P<src>[^_]+(?:_[^_]+)*?)_to_(?P<tgt>.+)$")
# transformers 5 removed these pipelines; gateway/pipelines/seq2seq.py and qa.py run them the v4 way.
SEQ2SEQ_TASKS = {
    "translation": "translation_text",
    "summarization": "summary_text",
    "text2text-generation": "generated_text",
}
OWN_RUNNERS = frozenset({*SEQ2SEQ_TASKS, "question-answering"})
# Tasks whose output changes when inputs are padded into one batch (feature-extraction returns the padded
# length's token vectors): their list calls run the model one input at a time.
UNPADDED_TASKS = frozenset({"feature-extraction"})


class PipelineInputError(ValueError):
    """The pipeline rejected the request's inputs or parameters (a 400, not a server fault)."""


@dataclass(frozen=True)
class Task:
    name: str  # canonical: what transformers.pipeline() (or our runner) is built for
    requested: str  # as the models file spells it
    call_defaults: dict[str, Any] = field(default_factory=dict)  # e.g. src_lang / tgt_lang of translation_xx_to_yy


def canonical_task(task: str) -> Task:
    if (match := _TRANSLATION.match(task)) is not None:
        return Task("translation", task, {"src_lang": match["src"], "tgt_lang": match["tgt"]})
    return Task(ALIASES.get(task, task), task)


def task_capabilities(task: str) -> frozenset[str]:
    return frozenset({PIPELINE, canonical_task(task).name})


def is_single(task: str, inputs: Any) -> bool:
    """One input (answered with that input's output) rather than a list of inputs (answered with a list)."""
    if task == "question-answering":
        return isinstance(inputs, dict)
    return not isinstance(inputs, list)


def single_output(task: str, single_input: Any, item_output: Any, parameters: dict[str, Any]) -> Any:
    """What `pipeline(x)` returns for one input, given what `pipeline([x, ...])` returned for x.
    text-classification wraps a string's single-label result in a list (transformers' legacy shape), and the
    seq2seq tasks answer a list of results per input where a list call flattens one-result lists."""
    if task == "text-classification" and isinstance(single_input, str) and "top_k" not in parameters:
        return [item_output]
    if task in SEQ2SEQ_TASKS and isinstance(item_output, dict):  # a list call flattens one-result lists
        return [item_output]
    return item_output
