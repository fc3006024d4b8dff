"""The app's own OpenAPI document: typed request bodies, 400 (never 422), every error status, SSE."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.app import create_app
from gateway.errors import ModelNotReadyError, error_body
from gateway.openapi import OPERATIONS


@functools.cache
def document() -> dict[str, Any]:
    return create_app().openapi()


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in document()["paths"].items() for method, op in ops.items()]


def component_validator(name: str) -> Draft202012Validator:
    registry = Registry().with_resource("urn:gantry", Resource.from_contents(document(), DRAFT202012))
    return Draft202012Validator({"$ref": f"urn:gantry#/components/schemas/{name}"}, registry=registry)


def test_the_table_covers_every_route() -> None:
    assert {(method, path) for method, path, _ in operations()} == set(OPERATIONS)


def test_no_422_is_documented_and_validation_errors_are_400_envelopes() -> None:
    for method, path, op in operations():
        assert "422" not in op["responses"], (method, path)
        if "requestBody" in op:
            error = op["responses"]["400"]["content"]["application/json"]["schema"]
            model = OPERATIONS[(method, path)].error_model.__name__  # Inference API, tutorials: own shape
            assert error == {"$ref": f"#/components/schemas/{model}"}, (method, path)
    assert "HTTPValidationError" not in document()["components"]["schemas"]


@pytest.mark.parametrize(
    ("path", "request_model", "chunk_model"),
    [
        ("/v1/chat/completions", "ChatCompletionRequest", "ChatCompletionChunk"),
        ("/v1/completions", "CompletionRequest", "Completion"),
    ],
)
def test_generation_routes_are_typed_and_stream(path: str, request_model: str, chunk_model: str) -> None:
    op = document()["paths"][path]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": f"#/components/schemas/{request_model}"}
    assert op["requestBody"]["required"] is True
    assert set(op["responses"]) == {"200", "400", "401", "404", "413", "415", "429", "500", "502", "503", "504"}
    content = op["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}
    event_data = content["text/event-stream"]["schema"]["properties"]["data"]["anyOf"]
    assert {"const": "[DONE]"} in event_data
    assert {d["contentSchema"]["$ref"].rsplit("/", 1)[1] for d in event_data if "contentSchema" in d} == {
        chunk_model,
        "ErrorResponse",
    }
    assert "Retry-After" in op["responses"]["429"]["headers"]


def test_request_schemas_describe_their_fields() -> None:
    schemas = document()["components"]["schemas"]
    assert {"messages", "temperature", "stream", "tools"} <= set(schemas["ChatCompletionRequest"]["properties"])
    assert "messages" in schemas["ChatCompletionRequest"]["required"]
    assert {"prompt", "echo", "logprobs"} <= set(schemas["CompletionRequest"]["properties"])


def test_response_models_are_documented_field_by_field() -> None:
    message = document()["components"]["schemas"]["AssistantMessage"]
    assert {"role", "content", "refusal", "tool_calls"} <= set(message["properties"])
    chunk = document()["components"]["schemas"]["ChatCompletionChunk"]
    assert {"id", "choices", "usage"} <= set(chunk["properties"])


def test_documented_error_schema_matches_what_the_server_sends() -> None:
    validator = component_validator("ErrorResponse")
    sent = ModelNotReadyError("loading").to_dict()
    assert list(validator.iter_errors(sent)) == []
    assert list(validator.iter_errors(error_body("x", "invalid_request_error"))) == []
    assert list(validator.iter_errors({"error": {"message": "x"}}))  # the schema can fail
