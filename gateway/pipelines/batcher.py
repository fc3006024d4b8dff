"""Micro-batching: single inputs that arrive within a few milliseconds of each other, with the same
parameters, run as one list call of the pipeline (which batches them through the model by `batch_size`).

Hand-written because no maintained library batches in-process callables on an asyncio loop; it is small:
a group per parameter set, flushed when full or when its first member has waited `wait_s`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

RunList = Callable[[list[Any], dict[str, Any]], Awaitable[list[Any]]]


@dataclass
class _Group:
    parameters: dict[str, Any]
    inputs: list[Any] = field(default_factory=list)
    waiters: list[asyncio.Future] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class MicroBatcher:
    def __init__(self, run_list: RunList, *, max_size: int, wait_s: float) -> None:
        self._run_list = run_list  # runs a list of inputs, returns one output per input
        self.max_size = max_size
        self.wait_s = wait_s
        self._open: dict[str, _Group] = {}
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, item: Any, parameters: dict[str, Any]) -> Any:
        """The output for `item` alone, computed in a batch with whatever arrives alongside."""
        if self.max_size <= 1:
            return (await self._run_list([item], parameters))[0]
        key = json.dumps(parameters, sort_keys=True, default=repr)
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = _Group(parameters)
            group.timer = asyncio.get_running_loop().call_later(self.wait_s, self._flush, key, group)
        waiter: asyncio.Future = asyncio.get_running_loop().create_future()
        group.inputs.append(item)
        group.waiters.append(waiter)
        if len(group.inputs) >= self.max_size:
            self._flush(key, group)
        return await waiter

    def _flush(self, key: str, group: _Group) -> None:
        if self._open.get(key) is group:
            del self._open[key]
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        task = asyncio.ensure_future(self._run(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, group: _Group) -> None:
        try:
            outputs = await self._run_list(group.inputs, group.parameters)
        except Exception as exc:
            if len(group.inputs) == 1:
                _settle(group.waiters[0], None, exc)
                return
            # One bad input must not fail the requests it was batched with: run each on its own.
            await asyncio.gather(
                *(
                    self._run_alone(item, w, group.parameters)
                    for item, w in zip(group.inputs, group.waiters, strict=True)
                )
            )
            return
        for waiter, output in zip(group.waiters, outputs, strict=True):
            _settle(waiter, output, None)

    async def _run_alone(self, item: Any, waiter: asyncio.Future, parameters: dict[str, Any]) -> None:
        try:
            _settle(waiter, (await self._run_list([item], parameters))[0], None)
        except Exception as exc:
            _settle(waiter, None, exc)


def _settle(waiter: asyncio.Future, output: Any, error: BaseException | None) -> None:
    if waiter.done():  # the request went away (cancelled)
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(output)
