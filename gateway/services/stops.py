"""OpenAI `stop` strings (trimmed, held back while they might still be starting) and the marker
scanning they share with tool-call and reasoning detection."""

from __future__ import annotations

from gateway.errors import InvalidRequestError


def normalize_stop(stop: str | list[str] | None, limit: int) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > limit:
        raise InvalidRequestError(f"At most {limit} stop sequences are allowed, got {len(stops)}.", param="stop")
    if any(s == "" for s in stops):
        raise InvalidRequestError("Stop sequences must not be empty strings.", param="stop")
    return stops


def split_at_marker(buffer: str, markers: list[str] | tuple[str, ...]) -> tuple[str, str | None, str]:
    """(text before, marker, text after) for the earliest marker in buffer; without one,
    (safe text, None, held tail) where the tail could still be the start of a marker."""
    hits = [(i, m) for m in markers if (i := buffer.find(m)) >= 0]
    if hits:
        index, marker = min(hits)
        return buffer[:index], marker, buffer[index + len(marker) :]
    hold = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(buffer)), hold, -1):
            if buffer.endswith(marker[:size]):
                hold = size
                break
    cut = len(buffer) - hold
    return buffer[:cut], None, buffer[cut:]


class StopStringMatcher:
    """Feed decoded text in; get back the text that is safe to emit and whether a stop string hit.

    Text that could be the beginning of a stop string is held back until the next piece decides it,
    so a stop string spanning several tokens (or streamer chunks) is still found and never leaks.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        out, marker, self.buffer = split_at_marker(self.buffer + text, self.stops)
        if marker is not None:
            self.buffer = ""
            return out, True
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out
