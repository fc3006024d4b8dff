"""Filesystem paths out of what non-admin callers see (GET /v1/models/{id} details).

A kind's own description may name where its weights, tokenizer or cache live; /admin shows that to the operator,
/v1 shows only the last part of each path (what `load_failure_cause` does for errors), so a caller learns the
file's name but nothing of the server's layout.
"""

from __future__ import annotations

import re
from typing import Any

# An absolute, home-relative or Windows path filling a whole value: `/srv/models/x`, `~/w`, `C:\\m\\x`, `./x/y`.
_WHOLE_PATH = re.compile(r"^(?:~|\.{1,2}|[A-Za-z]:)?[/\\]")
# A path inside text: two or more segments after a separator that does not follow a word character or `:`
# (so `text/plain` and URLs are left alone).
_EMBEDDED_PATH = re.compile(r"(?<![\w:/.\\-])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'\"`,;()\[\]{}<>]+){2,}[/\\]?")
_API_PATHS = ("/v1/", "/admin/", "/health")  # the gateway's own routes are not server paths


def _last_part(path: str) -> str:
    parts = [p for p in re.split(r"[/\\]", path) if p]
    return parts[-1] if parts else ""


def _scrub_text(text: str) -> str:
    if _WHOLE_PATH.match(text) and not text.startswith(_API_PATHS) and not any(c.isspace() for c in text):
        return _last_part(text)

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        return found if found.startswith(_API_PATHS) else _last_part(found)

    return _EMBEDDED_PATH.sub(replace, text)


def strip_paths(value: Any) -> Any:
    """The value with every filesystem path in its strings cut to its last part (dicts and lists walked)."""
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, dict):
        return {key: strip_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strip_paths(item) for item in value]
    return value


# Keys that name where the server's own backends live (an upstream replica's URL, say): /admin shows them,
# /v1 callers do not need them to use the model.
_INTERNAL_KEYS = frozenset({"url", "last_error"})


def public_details(details: dict[str, Any]) -> dict[str, Any]:
    """What GET /v1/models/{id} shows of a model's details: no filesystem paths, no backend addresses."""

    def drop_internal(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: drop_internal(item) for key, item in value.items() if key not in _INTERNAL_KEYS}
        if isinstance(value, list):
            return [drop_internal(item) for item in value]
        return value

    return strip_paths(drop_internal(details))
