"""The Hugging Face Inference API over pipeline entries: `{"inputs", "parameters", "options"}` in, the
pipeline's own output out (POST /models/{id}; gateway/routes/inference_api.py is the HTTP side).

Errors are the gateway's typed errors; the route's path gives them the Inference API's `{"error": …}` shape
(gateway/errors.py)."""

from __future__ import annotations

import re
from typing import Any

from gateway.accounting import count_tokens
from gateway.audio.body import audio_from_inputs
from gateway.errors import InvalidRequestError, ModelLoadingError, ModelNotFoundError
from gateway.pipelines import ASR, PIPELINE, PipelineInputError
from gateway.registry import ModelRegistry
from gateway.services.audio import infer_speech

# The Hub's feature-extraction URL form, /models/<id>/pipeline/<task>, routes to <id>.
_PIPELINE_SUFFIX = re.compile(r"^(?P<model>.+)/pipeline/[A-Za-z0-9_-]+$")
# Call parameters the server decides, never a request: batch size and DataLoader worker processes.
SERVER_ONLY_PARAMETERS = frozenset({"batch_size", "num_workers"})
MAX_LIST_INPUTS = 256


class InferenceAPIService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def resolve(self, model_id: str) -> str:
        try:
            self.registry.find(model_id)
            return model_id
        except ModelNotFoundError:
            match = _PIPELINE_SUFFIX.match(model_id)
            if match is None:
                raise
            self.registry.find(match["model"])
            return match["model"]

    async def infer(self, model_id: str, body: Any, *, wait: bool = False, audio: bytes | None = None) -> Any:
        """`body`: the parsed JSON; `audio`: a raw audio body instead (for an ASR model)."""
        if not model_id:
            raise ModelNotFoundError("No model id in the path: POST /models/<model id>.")
        model_id = self.resolve(model_id)
        inputs, parameters, wait_for_model = parse_body(body) if audio is None else (None, {}, False)
        try:
            lease = await self.registry.acquire(model_id, PIPELINE, wait=wait or wait_for_model)
        except ModelLoadingError as exc:  # the hosted API's exact words; estimated_time rides along
            raise ModelLoadingError(
                f"Model {model_id} is currently loading", estimated_time=exc.estimated_time
            ) from exc
        async with lease:
            handle = lease.served
            if handle.task == ASR:  # raw audio, or base64 `inputs` (huggingface_hub's form with parameters)
                return await infer_speech(handle, audio if audio is not None else audio_from_inputs(inputs), parameters)
            if audio is not None:
                raise InvalidRequestError(f"The model `{model_id}` ({handle.task}) takes JSON inputs, not audio.")
            check_inputs(handle.task, inputs)
            try:
                output = await handle.run(inputs, parameters)
            except PipelineInputError as exc:
                raise InvalidRequestError(str(exc), param="inputs") from exc
            count_tokens(*_token_counts(handle, inputs, output))
        return output


def parse_body(body: Any) -> tuple[Any, dict[str, Any], bool]:
    if not isinstance(body, dict):
        raise InvalidRequestError('The body must be a JSON object: {"inputs": …, "parameters": {…}}.')
    if "inputs" not in body:
        raise InvalidRequestError("`inputs` is required.", param="inputs")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequestError("`parameters` must be an object.", param="parameters")
    refused = sorted(SERVER_ONLY_PARAMETERS & set(parameters))
    if refused:
        raise InvalidRequestError(f"`parameters.{refused[0]}` is set by the server, not a request.", param="parameters")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidRequestError("`options` must be an object.", param="options")
    wait = options.get("wait_for_model", False)
    if not isinstance(wait, bool):
        raise InvalidRequestError("`options.wait_for_model` must be true or false.", param="options")
    return body["inputs"], parameters, wait


def check_inputs(task: str, inputs: Any) -> None:
    """Refuse what the pipeline would misread: a text task takes strings only (a string that is a path or
    URL stays text; text-classification also takes {"text", "text_pair"}), question-answering takes
    {"question", "context"} objects."""
    if task == ASR:
        raise InvalidRequestError(
            "Send the audio itself as the request body (Content-Type: audio/*), not JSON.", param="inputs"
        )
    items = inputs if isinstance(inputs, list) else [inputs]
    if isinstance(inputs, list) and not inputs:
        raise InvalidRequestError("`inputs` is an empty list.", param="inputs")
    if len(items) > MAX_LIST_INPUTS:
        raise InvalidRequestError(f"`inputs` holds more than {MAX_LIST_INPUTS} items.", param="inputs")
    if task == "question-answering":
        for item in items:
            if not (isinstance(item, dict) and _text(item.get("question")) and _text(item.get("context"))):
                raise InvalidRequestError(
                    '`inputs` must be {"question": "…", "context": "…"} (or a list of them), with non-empty strings.',
                    param="inputs",
                )
        return
    for item in items:
        if task == "text-classification" and isinstance(item, dict) and _text(item.get("text")):
            if set(item) <= {"text", "text_pair"} and (_text(item.get("text_pair")) or "text_pair" not in item):
                continue  # a sentence pair, as the pipeline takes it
        if not _text(item):
            raise InvalidRequestError("`inputs` must be a non-empty string or a list of them.", param="inputs")


def _text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _token_counts(handle: Any, inputs: Any, output: Any) -> tuple[int, int]:
    """Prompt tokens of the inputs and completion tokens of generated text, by the pipeline's tokenizer."""
    tokenizer = getattr(handle.pipeline, "tokenizer", None)
    if tokenizer is None:
        return 0, 0
    items = inputs if isinstance(inputs, list) else [inputs]
    texts = [v for item in items for v in (item.values() if isinstance(item, dict) else [item]) if isinstance(v, str)]
    generated = [
        value
        for result in (output if isinstance(output, list) else [output])
        for entry in (result if isinstance(result, list) else [result])
        if isinstance(entry, dict)
        for key, value in entry.items()
        if key in ("translation_text", "summary_text", "generated_text") and isinstance(value, str)
    ]

    def count(strings: list[str]) -> int:
        return sum(len(ids) for ids in tokenizer(strings, add_special_tokens=False)["input_ids"]) if strings else 0

    try:
        return count(texts), count(generated)
    except Exception:  # counting is for metrics only; never fail a served request over it
        return 0, 0
