"""Client-supplied text on its way into a log line: escaped and bounded, so it cannot forge lines."""

from __future__ import annotations

from collections.abc import Iterable

MAX_LOGGED_CHARS = 200
MAX_LOGGED_ITEMS = 20


def printable(text: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """repr() escapes every non-printable character (newlines, CR, ANSI escapes, U+2028, ...) and quotes
    the text, so a log reader sees exactly where client text begins and ends; long text is cut."""
    value = str(text)
    if len(value) > limit:
        return repr(value[:limit]) + f"…(+{len(value) - limit} chars)"
    return repr(value)


def printable_list(items: Iterable[object], limit: int = MAX_LOGGED_ITEMS) -> str:
    values = list(items)
    shown = ", ".join(printable(item) for item in values[:limit])
    return shown + (f", …(+{len(values) - limit} more)" if len(values) > limit else "")
