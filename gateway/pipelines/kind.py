"""`kind: pipeline`: a transformers task pipeline as a registry entry (see the package docstring)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.openmp_pool import released
from gateway.pipelines.batcher import MicroBatcher
from gateway.pipelines.jsonable import to_jsonable
from gateway.pipelines.tasks import (
    OWN_RUNNERS,
    PIPELINE,
    UNPADDED_TASKS,
    PipelineInputError,
    Task,
    canonical_task,
    is_single,
    single_output,
)
from gateway.progress import report
from gateway.specs import PIPELINE_TASKS, PipelineSpec

logger = logging.getLogger(__name__)

# What a pipeline raises for inputs or parameters it cannot use (a 400); anything else is a server fault.
INPUT_ERRORS = (ValueError, TypeError, KeyError, IndexError, AssertionError)


class PipelineHandle:
    """A loaded pipeline: `.pipeline`, `.task`, and `run()` off the event loop under `max_concurrency`."""

    def __init__(self, spec: PipelineSpec, task: Task, pipeline: Any) -> None:
        self.spec = spec
        self.task = task.name
        self.requested_task = task.requested
        self.call_defaults = {**task.call_defaults, **spec.parameters}
        self.pipeline = pipeline
        self.max_concurrency = spec.max_concurrency
        self._executor = ThreadPoolExecutor(spec.max_concurrency, thread_name_prefix=f"pipeline-{spec.name}")
        self._slots: asyncio.Semaphore | None = None  # made on the serving loop at first use
        self.batcher = MicroBatcher(self._call_list, max_size=spec.batch_size, wait_s=spec.batch_wait_ms / 1000)
        self.closed = False
        self.batches = 0  # pipeline calls over a list of inputs (several requests' inputs when batched)
        self.inputs_run = 0

    def parameters(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        return {**self.call_defaults, **(overrides or {})}

    async def run(self, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
        """The pipeline's own output for `inputs` (one input, or a list), made JSON-ready (numpy → lists).
        One input shares a batch with others arriving alongside; a list runs as one call."""
        params = self.parameters(parameters)
        if is_single(self.task, inputs):
            output = await self.batcher.submit(inputs, params)
            return to_jsonable(single_output(self.task, inputs, output, params))
        if not inputs:
            raise PipelineInputError("`inputs` is an empty list.")
        return to_jsonable(await self._call_list(list(inputs), params))

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        """`pipeline(*args, **kwargs)` as is, in a worker thread under the concurrency limit (for callers
        whose inputs are not batchable items, e.g. audio with its own chunking)."""
        return await self._in_thread(lambda: self.pipeline(*args, **kwargs))

    async def _call_list(self, items: list[Any], params: dict[str, Any]) -> list[Any]:
        def work() -> list[Any]:
            batch = 1 if self.task in UNPADDED_TASKS else min(len(items), self.spec.batch_size)
            outputs = self.pipeline(items, batch_size=batch, **params)
            self.batches += 1
            self.inputs_run += len(items)
            if not isinstance(outputs, list) or len(outputs) != len(items):  # one output per input, always
                outputs = [outputs] if len(items) == 1 else outputs
            return outputs

        return await self._in_thread(work)

    async def _in_thread(self, work: Any) -> Any:
        if self.closed:
            raise RuntimeError(f"model {self.spec.name} was unloaded")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        async with self._slots:
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self._executor, released(work))
            except PipelineInputError:
                raise
            except Exception as exc:
                if isinstance(exc, INPUT_ERRORS) or type(exc).__name__ == "PipelineException":
                    raise PipelineInputError(_short(exc)) from exc
                raise

    def close(self) -> None:
        self.closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "requested_task": self.requested_task,
            "batch_size": self.spec.batch_size,
            "max_concurrency": self.max_concurrency,
            "parameters": self.call_defaults,
            "device": str(getattr(self.pipeline, "device", "cpu")),
            "batches": self.batches,
            "inputs_run": self.inputs_run,
        }


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 500 else text[:499] + "…"


class PipelineKind:
    """Loads `transformers.pipeline(task, model=source)` (or our runner for a task transformers 5 dropped)."""

    name = "pipeline"
    capabilities = frozenset({PIPELINE, *(canonical_task(t).name for t in PIPELINE_TASKS)})

    def spec_capabilities(self, spec: PipelineSpec) -> frozenset[str]:
        """What this entry can serve: "pipeline" and its own task (narrower than the kind's)."""
        return frozenset({PIPELINE, canonical_task(spec.task).name})

    def load(self, spec: PipelineSpec) -> PipelineHandle:
        import torch  # noqa: F401  (heavy imports only in the loading thread)

        from gateway.pipelines.build import build_pipeline

        task = canonical_task(spec.task)
        report("loading pipeline")
        built = build_pipeline(spec, task)
        logger.info("pipeline %s: %s ready on %s", spec.name, task.name, getattr(built, "device", "?"))
        return PipelineHandle(spec, task, built)

    async def unload(self, handle: PipelineHandle) -> None:
        handle.close()
        handle.pipeline = None

    def describe(self, handle: PipelineHandle) -> dict[str, Any]:
        return handle.describe()

    def context_length(self, handle: PipelineHandle) -> int | None:
        tokenizer = getattr(handle.pipeline, "tokenizer", None)
        limit = getattr(tokenizer, "model_max_length", None)
        return limit if isinstance(limit, int) and 0 < limit < 10_000_000 else None

    def size_bytes(self, spec: PipelineSpec) -> int | None:
        path = Path(spec.source).expanduser()
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return None


__all__ = ["OWN_RUNNERS", "PipelineHandle", "PipelineKind"]
