"""The `embedding` kind: a sentence-transformers model answering /v1/embeddings (and /tokenize)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.registry.kinds import EMBEDDINGS, TOKENIZE
from gateway.specs import EmbeddingSpec


class EmbeddingKind:
    name = "embedding"
    capabilities = frozenset({EMBEDDINGS, TOKENIZE})

    def load(self, spec: EmbeddingSpec) -> Any:
        from gateway.engine.embedder import load_embedding_model  # torch: only once a model loads

        return load_embedding_model(spec)

    async def unload(self, handle: Any) -> None:
        handle.runner.close()  # queued requests still finish; the thread exits after them

    def describe(self, handle: Any) -> dict[str, Any]:
        return handle.describe()

    def context_length(self, handle: Any) -> int | None:
        return handle.context_length

    def size_bytes(self, spec: EmbeddingSpec) -> int | None:
        try:
            from gateway.engine.embedder import resolve_source

            path = Path(resolve_source(spec.source))
        except (ImportError, OSError, ValueError):
            return None
        if not path.is_dir():
            return None
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
