"""A pipeline's output made JSON-ready: numpy arrays and scalars and torch tensors become lists and numbers."""

from __future__ import annotations

from typing import Any


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "tolist"):  # numpy arrays/scalars, torch tensors
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return value.item()
    return str(value)
