"""Load progress: the code that loads a model reports stages; whoever started the load watches them.

The registry sets a reporter in a context variable around a load; `asyncio.to_thread` copies the context
into the loading thread, so the engine code reports without a callback threaded through every signature.
Outside a load, reporting only logs.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

Reporter = Callable[[str, float | None], None]
_reporter: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("gantry_load_progress", default=None)


def report(stage: str, fraction: float | None = None) -> None:
    """A load reached `stage` (and `fraction` of it, 0..1, when known)."""
    reporter = _reporter.get()
    if reporter is not None:
        reporter(stage, fraction)


@contextmanager
def reporting_to(reporter: Reporter) -> Iterator[None]:
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)
