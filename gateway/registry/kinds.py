"""Model kinds: what an entry's `kind` means — its capabilities, how it loads, unloads and describes itself.

The registry only talks to this protocol, so upstream engines, embedding models and task pipelines are new
kinds here, not new branches in the registry or the routes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gateway.gc_heap import collect_everything, freeze_heap, release_free_memory
from gateway.models import ServedModel
from gateway.specs import EMBEDDED_MODEL, ModelSpec, SpecBase
from gateway.upstream.kind import UpstreamKind

logger = logging.getLogger(__name__)

ModelFactory = Callable[[ModelSpec], ServedModel]

CHAT = "chat"
COMPLETION = "completion"
EMBEDDINGS = "embeddings"
TOKENIZE = "tokenize"  # POST /tokenize and /detokenize: any kind with a tokenizer


class ModelKind(Protocol):
    name: str
    capabilities: frozenset[str]

    def load(self, spec: SpecBase) -> Any:
        """Build the entry's handle; runs in a worker thread and may take minutes."""
        ...

    async def unload(self, handle: Any) -> None:
        """Stop the handle's work (in-flight requests end with an error) and drop what it caches; the
        registry then drops its last reference and collects (`free_memory`)."""
        ...

    def describe(self, handle: Any) -> dict[str, Any]:
        """Details for GET /v1/models/{id} once loaded."""
        ...

    def context_length(self, handle: Any) -> int | None: ...

    # Optional: `spec_capabilities(spec) -> frozenset[str]`, what one entry can serve when that is narrower
    # than the kind's `capabilities` (a pipeline serves its own task only).

    def size_bytes(self, spec: SpecBase) -> int | None:
        """Bytes of the weights on disk before the first load (for load-time and memory estimates)."""
        ...

    # Optional: `async def start(self, handle)`, run on the event loop once the handle is loaded (before
    # requests get it) — background tasks such as an upstream's health checks start there.


class LocalKind:
    """Today's chat/completion LLM in this process; its handle is a ServedModel (prompt pipeline + engine)."""

    name = "local"
    capabilities = frozenset({CHAT, COMPLETION, TOKENIZE})

    def __init__(self, factory: ModelFactory) -> None:
        self._factory = factory

    def load(self, spec: ModelSpec) -> ServedModel:
        return self._factory(spec)

    async def unload(self, handle: ServedModel) -> None:
        await handle.engine.close()  # running sequences end with an error, the engine thread exits
        if handle.grammar is not None:
            handle.grammar.close()  # also stops a compile in progress (its child process)
        handle.grammar = None  # compiled grammars hold tokenizer-sized tables

    def describe(self, handle: ServedModel) -> dict[str, Any]:
        return handle.describe()

    def context_length(self, handle: ServedModel) -> int | None:
        return handle.context_length

    def size_bytes(self, spec: ModelSpec) -> int | None:
        if spec.source == EMBEDDED_MODEL:
            try:
                from gateway.engine.loader import embedded_gguf_path  # torch: only when a size is asked for

                return embedded_gguf_path().stat().st_size
            except (ImportError, OSError):
                return None
        path = Path(spec.source).expanduser()
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return None


def settle_after_load() -> None:
    """Collect what a load left behind, freeze what stays (gateway/gc_heap.py), hand freed heap back."""
    freeze_heap()
    release_free_memory()


def free_memory() -> None:
    """Collect what an unloaded model left behind (frozen or not) and hand the heap (and the CUDA cache) back."""
    collect_everything()
    release_free_memory()
    torch = sys.modules.get("torch")  # never imported here just to ask: a front with upstreams only has none
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def default_kinds(factory: ModelFactory) -> dict[str, ModelKind]:
    from gateway.pipelines.kind import PipelineKind  # no torch at import
    from gateway.registry.embedding_kind import EmbeddingKind  # it imports this module's constants

    return {
        "local": LocalKind(factory),
        "upstream": UpstreamKind(),
        "pipeline": PipelineKind(),
        "embedding": EmbeddingKind(),
    }
