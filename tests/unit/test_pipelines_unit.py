"""Pipeline entries without a model: spec validation, task names, output shapes, and the micro-batcher."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.errors import ModelCapabilityError, ModelLoadingError, inference_api_body
from gateway.pipelines import PIPELINE, canonical_task, task_capabilities
from gateway.pipelines.batcher import MicroBatcher
from gateway.pipelines.kind import PipelineKind
from gateway.pipelines.tasks import single_output
from gateway.registry import ModelRegistry
from gateway.specs import PipelineSpec, parse_spec


def test_spec_parses_and_refuses_unknown_tasks() -> None:
    spec = parse_spec({"kind": "pipeline", "name": "fr", "task": "translation_en_to_fr", "source": "/m"})
    assert isinstance(spec, PipelineSpec) and spec.batch_size == 8 and spec.max_concurrency == 1
    with pytest.raises(ValidationError, match="unsupported pipeline task"):
        parse_spec({"kind": "pipeline", "name": "x", "task": "make-coffee", "source": "/m"})
    with pytest.raises(ValidationError):
        parse_spec({"kind": "pipeline", "name": "x", "task": "ner", "source": "/m", "batch_size": 0})


def test_task_names_and_capabilities() -> None:
    assert canonical_task("sentiment-analysis").name == "text-classification"
    assert canonical_task("ner").name == "token-classification"
    fr = canonical_task("translation_en_to_fr")
    assert fr.name == "translation" and fr.call_defaults == {"src_lang": "en", "tgt_lang": "fr"}
    assert task_capabilities("ner") == {PIPELINE, "token-classification"}


def test_single_input_output_shapes_follow_transformers() -> None:
    result = {"label": "POSITIVE", "score": 0.9}
    assert single_output("text-classification", "text", result, {}) == [result]
    assert single_output("text-classification", "text", [result], {"top_k": 1}) == [result]
    assert single_output("text-classification", {"text": "a", "text_pair": "b"}, result, {}) == result
    assert single_output("summarization", "text", {"summary_text": "s"}, {}) == [{"summary_text": "s"}]
    assert single_output("token-classification", "text", [], {}) == []


def test_registry_narrows_capabilities_per_entry() -> None:
    spec = parse_spec({"kind": "pipeline", "name": "ner", "task": "ner", "source": "/m"})
    registry = ModelRegistry([spec], lambda s: None)
    entry = registry.find("ner")
    assert registry.capabilities(entry) == {PIPELINE, "token-classification"}
    with pytest.raises(ModelCapabilityError, match="token-classification"):
        registry.get("ner", "automatic-speech-recognition")
    assert isinstance(registry.lifecycle.kind(entry), PipelineKind)


def test_loading_error_body_is_the_inference_api_shape() -> None:
    body = inference_api_body(ModelLoadingError("Model m is currently loading", estimated_time=12.34))
    assert body == {"error": "Model m is currently loading", "estimated_time": 12.3}


def test_micro_batcher_batches_and_isolates_a_failing_input() -> None:
    calls: list[list[Any]] = []

    async def run_list(items: list[Any], parameters: dict[str, Any]) -> list[Any]:
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad input")
        return [f"{item}:{parameters.get('p')}" for item in items]

    async def main() -> list[Any]:
        batcher = MicroBatcher(run_list, max_size=3, wait_s=0.05)
        jobs = [batcher.submit(x, {"p": 1}) for x in ("a", "b", "c", "d")] + [batcher.submit("e", {"p": 2})]
        jobs.append(batcher.submit("bad", {"p": 3}))
        jobs.append(batcher.submit("f", {"p": 3}))
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(main())
    assert results[:5] == ["a:1", "b:1", "c:1", "d:1", "e:2"]
    assert isinstance(results[5], ValueError) and results[6] == "f:3"
    assert ["a", "b", "c"] in calls and ["d"] in calls and ["e"] in calls  # full batch flushed at once
    assert ["bad", "f"] in calls and ["f"] in calls  # the failed batch re-ran its inputs one by one


def test_token_counts_use_the_pipelines_tokenizer() -> None:
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from gateway.services.inference_api import _token_counts
    from tests.conftest import tokenizer_fixture

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_fixture("gpt2"))
    handle = SimpleNamespace(pipeline=SimpleNamespace(tokenizer=tokenizer))
    inputs = ["Hello world", {"question": "Who?", "context": "Me."}]
    output = [[{"translation_text": "Bonjour le monde"}], {"label": "X", "score": 1.0}]
    prompt, completion = _token_counts(handle, inputs, output)
    n = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert prompt == n("Hello world") + n("Who?") + n("Me.")
    assert completion == n("Bonjour le monde") > 0
