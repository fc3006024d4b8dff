"""The heap left by startup and each model load is frozen out of later full collections, an unloaded model
is still collected (its reference cycles too), and every collection is timed into /metrics."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.engine.fake import FakeEngine
from gateway.gc_heap import collect_everything, freeze_heap
from gateway.metrics.gc_metrics import GcPauseCollector
from gateway.models import ServedModel
from gateway.settings import ModelSpec
from tests.unit.helpers import qwen_pipeline, qwen_tokenizer
from tests.unit.registry_helpers import multi_settings, open_multi

pytestmark = pytest.mark.anyio


class CyclicModels:
    """Builds engines that point at themselves (as real models do through hooks and closures) and keeps
    only weak references, so the registry's is the last strong one."""

    def __init__(self) -> None:
        self.built: list[weakref.ref] = []
        self.gates: dict = {}  # what open_multi releases at the end (FakeModels' load gates; none here)

    def __call__(self, spec: ModelSpec) -> ServedModel:
        engine = FakeEngine(pieces=["Hi"])
        engine.itself = engine  # type: ignore[attr-defined]  # only the cycle collector can free this
        self.built.append(weakref.ref(engine))
        return ServedModel(
            spec=spec, pipeline=qwen_pipeline(), engine=engine, context_length=4096, vocab_size=len(qwen_tokenizer())
        )


def tracked(obj: object) -> bool:
    """Whether the collector walks obj (frozen objects are in the permanent generation, outside all three)."""
    return any(each is obj for each in gc.get_objects())


async def test_a_loaded_model_is_frozen_and_still_freed_when_unloaded(tmp_path: Path) -> None:
    models = CyclicModels()
    settings = multi_settings(tmp_path, {"name": "cyclic", "source": "org/cyclic", "preload": True})
    try:
        async with open_multi(settings, models) as m:  # type: ignore[arg-type]
            (ref,) = models.built
            assert gc.get_freeze_count() > 0 and not tracked(ref())
            assert (await m.chat("cyclic")).status_code == 200
            await m.registry.unload("cyclic")
            assert ref() is None  # the frozen cycle was collected by the unload
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual


def test_collect_everything_reaches_frozen_cycles() -> None:
    class Node:
        pass

    node = Node()
    node.me = node  # type: ignore[attr-defined]
    ref = weakref.ref(node)
    try:
        freeze_heap()
        del node
        gc.collect()
        assert ref() is not None  # frozen: an ordinary full collection no longer looks at it
        collect_everything()
        assert ref() is None
    finally:
        gc.unfreeze()


def scrape(collector: GcPauseCollector) -> list:
    registry = CollectorRegistry()
    registry.register(collector)
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


def test_collections_are_timed_by_generation_while_the_timer_is_installed() -> None:
    pauses = GcPauseCollector()

    def full_collections() -> tuple[float, float]:
        (family,) = scrape(pauses)
        samples = {(s.name, s.labels["generation"]): s.value for s in family.samples if "le" not in s.labels}
        return samples[("gantry_gc_pause_seconds_count", "2")], samples[("gantry_gc_pause_seconds_sum", "2")]

    pauses.timer.install()
    try:
        gc.collect()
        gc.collect(0)
    finally:
        pauses.timer.remove()
    count, seconds = full_collections()
    assert count == 1 and seconds > 0
    assert pauses.pauses[0].counts != [0] * len(pauses.pauses[0].counts)
    gc.collect()  # removed: no longer observed
    assert full_collections() == (count, seconds)


FREED_BUFFERS = """
import sys, torch
from gateway.gc_heap import bound_heap_retention
if sys.argv[1] == "pinned":
    bound_heap_retention()
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) << 10
big = torch.ones(16 << 18)  # 16 MiB, mapped: once freed, glibc raises its mmap threshold to that size
del big
before = rss()
buffers = [torch.ones(1 << 18) for _ in range(24)]  # activations: 24 x 1 MiB, written, then freed
del buffers
print(rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
@pytest.mark.parametrize("mode", ["default", "pinned"])
def test_freed_activation_buffers_go_back_to_the_os_once_thresholds_are_pinned(mode: str) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    run = subprocess.run(
        [sys.executable, "-c", FREED_BUFFERS, mode], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    kept = int(run.stdout.split()[-1])
    if mode == "pinned":
        assert kept < 6 << 20, f"{kept / 2**20:.1f} MiB of freed buffers still resident"
    else:  # glibc's default keeps them: what the pinning is for (if this changes, the pinning may go)
        assert kept > 16 << 20, f"only {kept / 2**20:.1f} MiB kept by glibc's defaults"
