"""Typed errors raised while turning a conversation into a prompt.

The gateway maps each to an OpenAI-style 400; nothing here knows about HTTP.

    AdapterError
    ├── ChatNotSupportedError   the model has no chat template (completion-only)
    ├── TemplateRenderError     the template refused the conversation (e.g. roles)
    └── UnknownFamilyError      an explicit family name that is not registered
"""


class AdapterError(Exception):
    """Base class for prompt-pipeline errors."""

    param: str | None = "messages"


class ChatNotSupportedError(AdapterError):
    """The model has no chat template, so only /v1/completions can serve it."""


class TemplateRenderError(AdapterError):
    """The chat template raised while rendering the request's messages."""


class UnknownFamilyError(AdapterError):
    """An operator asked for a family name that is not registered."""

    param = "family"
