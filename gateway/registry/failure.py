"""What clients may see of a failed load: a short cause without filesystem paths, plus an error ref
that names the full log line (paths, traceback) for the operator."""

from __future__ import annotations

import re
from pathlib import Path

# An absolute POSIX or Windows path inside an exception message (up to whitespace or a quote).
_PATH = re.compile(r"""(?<![\w.])(?:[A-Za-z]:[\\/]|/|~/)[^\s'"`,;)]+""")
_MAX_CAUSE = 300


def load_failure_cause(exc: BaseException) -> str:
    """The short, client-safe cause of a failed load, shown by /health/ready, /v1/models and the 503s: the
    exception type and first line of its message, filesystem paths reduced to their last part (the full
    error, with paths and traceback, is in the server log)."""
    if isinstance(exc, FileNotFoundError) and isinstance(exc.filename, str) and exc.filename:
        return f"the model file or directory was not found ({Path(exc.filename).name})"
    lines = str(exc).strip().splitlines()
    message = _PATH.sub(_last_part, lines[0] if lines else "")
    cause = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return cause if len(cause) <= _MAX_CAUSE else cause[: _MAX_CAUSE - 1] + "…"


def _last_part(match: re.Match[str]) -> str:
    path = match.group(0)
    body = path.rstrip(".:")  # sentence punctuation after the path stays
    name = re.split(r"[\\/]", body.rstrip("\\/"))[-1]
    return (name or "<path>") + path[len(body) :]
