"""uvicorn's Server, with the signals routed through the app's drain (gateway/shutdown.py).

uvicorn alone stops listening at the first signal, leaves running requests `timeout_graceful_shutdown` seconds
and then cancels them mid-response (a stream gets no [DONE], a JSON request a bare 500), and finally re-raises
the signal, so the process ends with a KeyboardInterrupt traceback or killed by SIGTERM. Here the first signal
starts the drain and uvicorn's shutdown only begins once it is over; a second one ends the grace period at once,
a third forces the exit. The process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn

from gateway.shutdown import Shutdown

logger = logging.getLogger(__name__)


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown: Shutdown) -> None:
        super().__init__(config)
        self.shutdown_state = shutdown
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    # Overrides uvicorn's handler (and sse-starlette's patch of it, whose exit watcher would otherwise cut every
    # stream without [DONE] as soon as the signal arrives). Runs in the main thread between bytecodes, so it only
    # hands work to the event loop.
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or not self.started:  # still starting: nothing to drain
            self.should_exit = True
            return
        if self._drain_task is None:
            logger.info("received %s", signal.Signals(sig).name)
            self._loop.call_soon_threadsafe(self._start_drain)
        elif not self.shutdown_state.aborted:
            self._loop.call_soon_threadsafe(self.shutdown_state.abort)
        else:
            self.force_exit = self.should_exit = True

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await self.shutdown_state.drain()
        finally:
            self.should_exit = True  # uvicorn's main loop notices within 0.1 s and closes the sockets
