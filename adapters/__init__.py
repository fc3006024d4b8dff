"""Per-family prompt adapters: declarative family records plus one shared pipeline."""

from adapters.errors import AdapterError, ChatNotSupportedError, TemplateRenderError, UnknownFamilyError
from adapters.family import FamilyAdapter
from adapters.pipeline import PromptPipeline
from adapters.registry import AdapterRegistry

__all__ = [
    "AdapterError",
    "AdapterRegistry",
    "ChatNotSupportedError",
    "FamilyAdapter",
    "PromptPipeline",
    "TemplateRenderError",
    "UnknownFamilyError",
]
