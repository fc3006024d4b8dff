"""Validate payloads against the official OpenAI OpenAPI document's component schemas.

The document (tests/fixtures/openapi/openai-openapi.json, see its SOURCE.md) is OpenAPI 3.1, whose schemas are
JSON Schema 2020-12, but it still carries 3.0's `nullable: true` in places. We translate that keyword to a
JSON-Schema union and validate with `jsonschema` (already a dependency), resolving `#/components/schemas/...`
references inside the one document. `openapi-schema-validator` offers either 3.0 semantics (`nullable`, but Draft 4
keywords) or 3.1 semantics (no `nullable`), not the mix this document is written in, so it is not used.

Usage:  `violations("CreateChatCompletionResponse", payload)` -> list of messages (empty: conforms);
        `assert_conforms(name, payload)` fails the test with every violation listed.
The 3.4 MB document is parsed and translated once per process; validators are built once per schema name.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import FIXTURES

SPEC_PATH = FIXTURES / "openapi" / "openai-openapi.json"
SPEC_URI = "urn:gantry:openai-openapi"

# A component of our own, derived from CreateCompletionResponse (see _legacy_completion_looseness).
COMPLETION_STREAM_CHUNK = "GantryCompletionStreamChunk"

SCHEMAS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    COMPLETION_STREAM_CHUNK,
    "ListModelsResponse",
    "Model",
    "CreateEmbeddingResponse",
    "ErrorResponse",
)


def _nullable_to_union(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` → `anyOf: [schema, {type: null}]` (a plain `type` list would miss enums)."""
    if isinstance(node, list):
        return [_nullable_to_union(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_to_union(value) for key, value in node.items()}
    if out.get("nullable") is True:
        del out["nullable"]
        return {"anyOf": [out, {"type": "null"}]}
    out.pop("nullable", None)
    return out


def _legacy_completion_looseness(schemas: dict[str, Any]) -> None:
    """The legacy /v1/completions API as OpenAI itself serves it is looser than the document in two places.

    1. With `echo` + `logprobs`, the prompt's first token has no logprob: OpenAI sends `null` as the first entry
       of `token_logprobs` and of `top_logprobs`. Allowed here for the first entry only.
    2. Streamed completion chunks reuse CreateCompletionResponse ("both share the same shape"), yet every chunk but
       a choice's last carries `finish_reason: null`. Allowed only in the derived stream-chunk schema.
    """
    response = schemas["CreateCompletionResponse"]
    choice = response["properties"]["choices"]["items"]
    logprobs = next(s for s in choice["properties"]["logprobs"]["anyOf"] if s.get("type") == "object")
    for field in ("token_logprobs", "top_logprobs"):
        array = logprobs["properties"][field]
        array["prefixItems"] = [{"anyOf": [array["items"], {"type": "null"}]}]

    chunk = copy.deepcopy(response)
    finish = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {"anyOf": [finish, {"type": "null"}]}
    schemas[COMPLETION_STREAM_CHUNK] = chunk


@functools.cache
def _registry() -> Registry:
    document = _nullable_to_union(json.loads(SPEC_PATH.read_text(encoding="utf-8")))
    _legacy_completion_looseness(document["components"]["schemas"])
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


@functools.cache
def validator(name: str) -> Draft202012Validator:
    if name not in SCHEMAS:
        raise KeyError(f"unknown component schema {name!r}; known: {', '.join(SCHEMAS)}")
    return Draft202012Validator(
        {"$ref": f"{SPEC_URI}#/components/schemas/{name}"},
        registry=_registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def violations(name: str, payload: Any) -> list[str]:
    """Every way `payload` breaks component schema `name`, as `path: message` lines (best match first)."""
    errors = sorted(validator(name).iter_errors(payload), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    return [f"{e.json_path}: {e.message}" for e in errors]


def assert_conforms(name: str, payload: Any) -> None:
    found = violations(name, payload)
    assert not found, f"{name} violations:\n" + "\n".join(found) + f"\npayload: {json.dumps(payload)[:2000]}"
