"""xgrammar compilation in a child process, so a compile that runs too long can be stopped.

xgrammar's compile cannot be interrupted from Python: a 5 MB `enum` ran for 13+ minutes and +1 GB, and a
thread left running would keep that core and memory. Each model's compiles run in one child process
(forked from a forkserver that has xgrammar imported, so a new child is ready in milliseconds); a compile
past its time budget, or running at shutdown, kills the child, which frees its CPU and memory at once.
The compiled grammar comes back serialized (xgrammar's own JSON form) and is rebuilt next to the
tokenizer info of the serving process.

Nothing heavy is imported here at module level: the child imports only what it needs.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import signal
import sys
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0  # the first start imports xgrammar (and torch) in the forkserver
POLL_S = 0.05
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class CompileTimeout(Exception):
    """The compile did not finish within its budget; the child that ran it was killed."""


class CompileFailed(Exception):
    """xgrammar refused the schema (its message), or the child died while compiling."""


def _context() -> Any:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["xgrammar", __name__])
        return context
    return multiprocessing.get_context("spawn")


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when the process that forked it (the forkserver) ends, so a compile can
    never outlive the server, even one killed without running its shutdown."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl: the shutdown path still kills the child
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable")


def _child_main(conn: Any, tokenizer_info_json: str, max_threads: int) -> None:
    """Child process: build the compiler once, then answer (kind, payload) to each schema JSON sent."""
    _die_with_parent()
    import xgrammar as xgr

    info = xgr.TokenizerInfo.deserialize_json(tokenizer_info_json)
    compiler = xgr.GrammarCompiler(info, max_threads=max_threads, cache_enabled=False)
    conn.send(("ready", ""))
    while True:
        try:
            schema_json = conn.recv()
        except (EOFError, OSError):  # the server went away
            return
        try:
            compiled = compiler.compile_json_schema(schema_json, any_whitespace=False, strict_mode=True)
            conn.send(("ok", compiled.serialize_json()))
        except Exception as exc:  # the schema's fault: its message goes back to the request
            conn.send(("error", str(exc) or type(exc).__name__))


class CompilerProcess:
    """One child process that compiles JSON schemas for one tokenizer, one at a time."""

    def __init__(self, tokenizer_info_json: str, *, max_threads: int = 1) -> None:
        self._info_json = tokenizer_info_json
        self._max_threads = max_threads
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Any = None
        self._closed = False
        self.kills = 0  # compiles stopped by their budget (for stats and tests)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        context = _context()
        parent, child = context.Pipe()
        process = context.Process(
            target=_child_main, args=(child, self._info_json, self._max_threads), daemon=True, name="grammar-compile"
        )
        process.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            process.kill()
            raise CompileFailed("the grammar compiler did not start")
        try:
            parent.recv()
        except (EOFError, OSError) as exc:
            raise CompileFailed("the grammar compiler did not start") from exc
        self._process, self._conn = process, parent

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
            self._conn.close()
        self._process = self._conn = None

    def compile(self, schema_json: str, budget_s: float) -> str:
        """The serialized compiled grammar; CompileTimeout after budget_s seconds of compiling."""
        with self._lock:
            if self._closed:
                raise CompileFailed("the server is shutting down")
            if self._process is None or not self._process.is_alive():
                self._stop()
                self._start()
            self._conn.send(schema_json)
            deadline = time.monotonic() + budget_s
            while not self._conn.poll(POLL_S):
                if self._closed or time.monotonic() >= deadline:
                    self._stop()  # the only way to stop xgrammar mid-compile
                    self.kills += 1
                    raise CompileTimeout(f"no result within {budget_s:g} s")
            try:
                kind, payload = self._conn.recv()
            except (EOFError, OSError) as exc:  # killed from outside (e.g. out of memory)
                self._stop()
                raise CompileFailed("the grammar compiler stopped while compiling") from exc
        if kind != "ok":
            raise CompileFailed(payload)
        return payload

    def close(self) -> None:
        """Stop the child now, also in the middle of a compile (its caller gets CompileTimeout)."""
        self._closed = True
        if self._lock.acquire(timeout=1.0):
            try:
                self._stop()
            finally:
                self._lock.release()
        elif self._process is not None:  # a compile holds the lock: it sees _closed within POLL_S
            self._process.kill()
