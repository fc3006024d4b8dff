"""OpenAI `stop` strings: trimmed from the output, held back while they might still be starting."""

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
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[: min(hits)], ""
            return out, True
        hold = self._partial_suffix_len()
        cut = len(self.buffer) - hold
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out

    def _partial_suffix_len(self) -> int:
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.buffer)), longest, -1):
                if self.buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest
