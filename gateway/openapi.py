"""The OpenAPI document told honestly: every status a route can answer, and SSE for the streaming routes.

FastAPI documents request bodies and 200 responses from the routes' models, but also a 422 the server never
sends (validation errors are 400 with the OpenAI envelope, see gateway.errors) and none of the errors that the
services, admission control and middleware raise. This module fixes the document in one place, after FastAPI has
generated it, from the table below; a unit test checks that the table covers every route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.schemas.chat import ChatCompletionChunk
from gateway.schemas.compat import DetailError
from gateway.schemas.completions import Completion
from gateway.schemas.errors import ErrorResponse
from gateway.schemas.inference_api import InferenceAPIError, InferenceRequest

REF = "#/components/schemas/{model}"

ERROR_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a field of the wrong type or out of range, an unsupported parameter, "
    "or a prompt longer than the model's context.",
    401: "The API key (or, for /admin, the admin key) is missing, unknown or expired: send `Authorization: Bearer "
    "<key>`, `api-key` or `x-api-key` (code `invalid_api_key`).",
    404: "No such model is served here (and every /admin route while no admin key is configured).",
    409: "A model with that id is already registered.",
    413: "The request body is larger than the configured limit.",
    415: "The request body is not declared as JSON (`Content-Type: application/json`), or, on /v1/audio, as "
    "`multipart/form-data`.",
    429: "Every running and queued place for the model is taken (code `overloaded`), or the API key used up its "
    "rpm, tpm or concurrent requests (code `rate_limit_exceeded`, with the `x-ratelimit-*` headers); retry after "
    "`Retry-After` seconds.",
    500: "Generation failed inside the engine; the same request would fail again.",
    502: "An upstream server (`kind: upstream`) gave a bad answer on every replica tried.",
    504: "The request ran past the server's request timeout (its generation was stopped), or an upstream server "
    "(`kind: upstream`) did not answer within its configured timeout.",
    503: "The model is loading (code `model_loading`, with `estimated_time`; retry after `Retry-After` seconds or "
    "send `x-wait-for-model: true`), failed to load, or the server is shutting down.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
GENERATION_ERRORS = (400, 404, 413, 415, 429, 500, 502, 503, 504)
ADMIN_ERRORS = (401, 404)
SPEECH_ERRORS = (400, 404, 413, 415, 500, 503)  # 415: a body that is not multipart/form-data


@dataclass(frozen=True)
class Documented:
    errors: tuple[int, ...] = ()
    stream_chunk: type[BaseModel] | None = None  # the model of each SSE `data:` line when `stream: true`
    multipart: bool = False  # a form with a file: FastAPI documents a form model as urlencoded
    error_model: type[BaseModel] = ErrorResponse  # the body of its errors (the Inference API has its own)
    request_model: type[BaseModel] | None = None  # a body the route parses itself, named in openapi_extra


OPERATIONS: dict[tuple[str, str], Documented] = {
    ("post", "/v1/chat/completions"): Documented(GENERATION_ERRORS, ChatCompletionChunk),
    ("post", "/v1/completions"): Documented(GENERATION_ERRORS, Completion),
    ("get", "/v1/models"): Documented(),
    ("get", "/v1/models/{model_id}"): Documented((404,)),
    ("get", "/health"): Documented(),
    ("get", "/health/ready"): Documented((404, 503)),  # its 503 body carries the envelope beside status and models
    ("get", "/admin/models"): Documented(ADMIN_ERRORS),
    ("post", "/admin/models"): Documented((400, *ADMIN_ERRORS, 409, 413, 415)),
    ("post", "/admin/models/{model_id}/load"): Documented((*ADMIN_ERRORS, 503)),
    ("post", "/admin/models/{model_id}/unload"): Documented(ADMIN_ERRORS),
    ("delete", "/admin/models/{model_id}"): Documented(ADMIN_ERRORS),
    ("post", "/v1/embeddings"): Documented((400, 404, 413, 415, 429, 500, 503)),
    ("post", "/tokenize"): Documented((400, 404, 413, 415, 429, 503)),
    ("post", "/detokenize"): Documented((400, 404, 413, 415, 429, 503)),
    ("post", "/v1/audio/transcriptions"): Documented(SPEECH_ERRORS, multipart=True),
    ("post", "/v1/audio/translations"): Documented(SPEECH_ERRORS, multipart=True),
    ("post", "/models/{model_id}"): Documented(
        (400, 404, 413, 415, 500, 503), error_model=InferenceAPIError, request_model=InferenceRequest
    ),
    # the tutorials' routes (gateway/routes/compat.py): errors as {"detail": …}
    ("post", "/generate"): Documented(GENERATION_ERRORS, error_model=DetailError),
    ("post", "/"): Documented(GENERATION_ERRORS, error_model=DetailError),
    ("get", "/metrics"): Documented(),
}


def install_openapi(app: FastAPI) -> None:
    """Post-process FastAPI's generated document (cached by FastAPI; the edits are idempotent)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return document(generate())

    app.openapi = openapi  # type: ignore[method-assign]


def document(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    extra = [m for d in OPERATIONS.values() for m in (d.stream_chunk, d.request_model, d.error_model) if m]
    _add_models(components, ErrorResponse, *extra)
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            documented = OPERATIONS.get((method, path), Documented())
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            # with API keys configured every route but the health probes needs a key and counts against its limits
            keyed = () if path.startswith("/health") else (401, 429)
            for status in sorted({*documented.errors, *keyed}):
                responses[str(status)] = _error_response(status, documented.error_model)
            if documented.stream_chunk is not None:
                responses["200"]["content"]["text/event-stream"] = _event_stream(documented.stream_chunk)
            if documented.multipart:
                _as_multipart(operation, components)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def _as_multipart(operation: dict[str, Any], components: dict[str, Any]) -> None:
    """The form's media type is multipart/form-data and its UploadFile fields are binary strings."""
    content = operation.get("requestBody", {}).get("content", {})
    form = content.pop("application/x-www-form-urlencoded", None)
    if form is None:
        return
    content["multipart/form-data"] = form
    name = form.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
    for field in components.get(name, {}).get("properties", {}).values():
        if field.get("contentMediaType") == "application/octet-stream":
            field.pop("contentMediaType")
            field["format"] = "binary"


def _error_response(status: int, model: type[BaseModel] = ErrorResponse) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
    }
    if status in (429, 503):
        response["headers"] = RETRY_AFTER
    return response


def _event_stream(chunk: type[BaseModel]) -> dict[str, Any]:
    """One server-sent event, as OpenAPI before 3.2 describes an event stream (3.2 calls it `itemSchema`)."""
    name = chunk.__name__

    def json_data(model: str) -> dict[str, Any]:
        return {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": REF.format(model=model)},
        }

    return {
        "schema": {
            "type": "object",
            "description": f"With `stream: true`, server-sent events: one `data: <{name} JSON>` per chunk, "
            "`data: <ErrorResponse JSON>` if generation fails after the first byte, and `data: [DONE]` last.",
            "required": ["data"],
            "properties": {"data": {"anyOf": [json_data(name), json_data("ErrorResponse"), {"const": "[DONE]"}]}},
        }
    }


def _add_models(components: dict[str, Any], *models: type[BaseModel]) -> None:
    _, definitions = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    for name, definition in definitions.get("$defs", {}).items():
        components.setdefault(name, definition)
