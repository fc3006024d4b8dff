"""Decide how a chat request's output is shaped: plain text, JSON (response_format), or tool calls
(tool_choice none/auto/required/named), and whether the template thinks in <think> blocks.

Constrained modes get a grammar (xgrammar) so even a 135M model returns valid JSON / valid calls:
required → a JSON array of {"name", "arguments"} objects matching the tools' schemas (no more calls
than tools offered; exactly one with parallel_tool_calls false); a named tool →
its arguments object; json_object / json_schema → that schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from adapters.tool_calls import DEFAULT_FORMAT, FORMATS, ToolCallFormat, inject_tools, template_renders_tools
from gateway.engine.grammar import GrammarCache, GrammarError, GrammarTooComplexError
from gateway.errors import InvalidRequestError
from gateway.models import ServedModel
from gateway.schemas.chat import ChatCompletionRequest

Kind = Literal["text", "json", "tools_auto", "tools_required", "tool_named"]
SOFT_JSON_LIMIT = 1024  # tokens of constrained output when the request sets no max_tokens
JSON_SCHEMA_UNSUPPORTED = "'response_format' of type 'json_schema' is not supported with this model"


@dataclass(frozen=True)
class OutputMode:
    kind: Kind = "text"
    tool_format: ToolCallFormat | None = None
    named_tool: str | None = None
    grammar: Any = None  # compiled grammar the output must follow (JSON modes and forced tool calls)
    reasoning: bool = False  # the template uses <think>…</think>

    def processors(self, served: ServedModel, max_new_tokens: int, explicit_budget: bool) -> tuple:
        """Logits-processor factories for this mode; constrained output closes before the budget ends
        (or before a soft limit when the request set no max_tokens)."""
        if self.grammar is None:
            return ()
        close_by = max_new_tokens if explicit_budget else min(max_new_tokens, SOFT_JSON_LIMIT)
        return served.grammar.processors(self.grammar, close_by)


@dataclass
class PromptPlan:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    mode: OutputMode = field(default_factory=OutputMode)
    schema: dict[str, Any] | None = None  # the JSON schema the output is held to (compile_mode compiles it)
    schema_param: str = "response_format"


def _validate_tools(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_name: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise InvalidRequestError("Only tools of type 'function' are supported.", param=f"tools.{i}")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise InvalidRequestError("Every tool needs a function name.", param=f"tools.{i}.function.name")
        by_name[function["name"]] = function
    return by_name


def _tool_choice(req: ChatCompletionRequest, names: dict[str, dict[str, Any]]) -> tuple[str, str | None]:
    choice = req.tool_choice
    if choice is None:
        return ("auto" if names else "none"), None
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequestError(f"Unknown tool_choice {choice!r}.", param="tool_choice")
        if choice == "required" and not names:
            raise InvalidRequestError("tool_choice 'required' needs at least one tool.", param="tool_choice")
        return choice, None
    function = choice.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequestError(
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )
    name = function["name"]
    if name not in names:
        raise InvalidRequestError(f"tool_choice names a function {name!r} that is not in tools.", param="tool_choice")
    return "named", name


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    params = function.get("parameters")
    return params if isinstance(params, dict) and params else {"type": "object", "properties": {}}


def _calls_schema(functions: dict[str, dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """The JSON array a forced call list must be: one call, or (parallel) at most as many as tools offered.

    The bound is what ends the list: a small model otherwise repeats its call until the budget runs
    out. A grammar cannot say "each tool at most once" without one rule per subset of the tools, so
    with several tools offered one of them may still be called twice, but there are never more calls
    than tools (and a single tool is called once).
    """
    variants = [
        {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [name]}, "arguments": _parameters(function)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, function in functions.items()
    ]
    return {"type": "array", "items": {"anyOf": variants}, "minItems": 1, "maxItems": len(variants) if parallel else 1}


def _response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequestError(
                'response_format.json_schema must be an object: {"name": ..., "schema": {...}}.',
                param="response_format",
            )
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequestError("response_format.json_schema.schema must be an object.", param="response_format")
        return schema
    raise InvalidRequestError(f"Unsupported response_format type {kind!r}.", param="response_format")


def _grammar(served: ServedModel) -> GrammarCache:
    if served.grammar is None:
        served.grammar = GrammarCache(served.pipeline.tokenizer, served.vocab_size, served.pipeline.stop_token_ids)
    return served.grammar


def _schema_hint(messages: list[dict[str, Any]], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Show the model the schema it is held to, as OpenAI does: the grammar guarantees the shape, the
    hint lets even a small model fill it sensibly and close it early."""
    hint = f"Respond only with a JSON object that matches this JSON schema:\n{json.dumps(schema)}"
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{hint}".lstrip()}, *messages[1:]]
    return [{"role": "system", "content": hint}, *messages]


def plan_prompt(req: ChatCompletionRequest, served: ServedModel, messages: list[dict[str, Any]]) -> PromptPlan:
    """Messages and tools to render, plus the output mode and the schema its grammar needs (compiled
    later by `compile_mode`, after the cheaper checks); every invalid combination is a 400 here."""
    functions = _validate_tools(req.tools or [])
    choice, named = _tool_choice(req, functions)
    template = served.pipeline.chat_template
    native_tools = template_renders_tools(template)
    has_tool_history = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    reasoning = bool(template) and "<think>" in template
    offered = req.tools if choice != "none" else []
    if not native_tools and (offered or has_tool_history):
        messages, tools = inject_tools(messages, offered or []), None
        tool_format = FORMATS[DEFAULT_FORMAT]
    else:
        tools = offered or None
        tool_format = FORMATS.get(served.pipeline.tool_parser or DEFAULT_FORMAT, FORMATS[DEFAULT_FORMAT])
    schema: dict[str, Any] | None = None
    if choice == "named":
        schema = _parameters(functions[named])
        mode = OutputMode("tool_named", named_tool=named)
    elif choice == "required":
        schema = _calls_schema(functions, req.parallel_tool_calls is not False)
        mode = OutputMode("tools_required")
    else:
        schema = _response_schema(req.response_format)
        if schema is not None:
            if req.response_format.get("type") == "json_schema":
                messages = _schema_hint(messages, schema)
            mode = OutputMode("json", reasoning=reasoning)
        elif choice == "auto":
            mode = OutputMode("tools_auto", tool_format=tool_format, reasoning=reasoning)
        else:
            mode = OutputMode("text", reasoning=reasoning)
    param = "response_format" if choice in ("auto", "none") else "tools"
    return PromptPlan(messages=messages, tools=tools, mode=mode, schema=schema, schema_param=param)


def compile_mode(prompt: PromptPlan, served: ServedModel, budget_s: float) -> OutputMode:
    """The plan's output mode with its grammar compiled (within budget_s seconds); 400 when it cannot be."""
    if prompt.schema is None:
        return prompt.mode
    try:
        grammar = _grammar(served).compile(prompt.schema, budget_s)
    except GrammarTooComplexError as exc:
        raise InvalidRequestError(
            f"The JSON schema is too complex: it did not compile within {exc.budget_s:g} s.", param=prompt.schema_param
        ) from None
    except GrammarError as exc:
        raise InvalidRequestError(
            f"{JSON_SCHEMA_UNSUPPORTED}: the schema uses a feature the grammar engine cannot enforce ({exc}).",
            param=prompt.schema_param,
        ) from None
    return replace(prompt.mode, grammar=grammar)
