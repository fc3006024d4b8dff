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
from gateway.gc_heap import (
    LONG_PROMPT_MMAP_THRESHOLD_BYTES,
    SERVING_MMAP_THRESHOLD_BYTES,
    MallocThresholds,
    collect_everything,
    freeze_heap,
)
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
from gateway.gc_heap import MALLOC_THRESHOLDS, release_free_memory
MALLOC_THRESHOLDS.install()
if sys.argv[1] == "long prompt":
    MALLOC_THRESHOLDS.long_prompt(object(), True)
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) << 10
big = torch.ones(16 << 18)  # 16 MiB, mapped: once freed, glibc raises its mmap threshold to that size
del big
before = rss()
buffers = [torch.ones(1 << 18) for _ in range(40)]  # activations: 40 x 1 MiB, written, then freed
del buffers
kept = rss() - before
release_free_memory()  # what an engine does when it goes idle
print(kept, rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
@pytest.mark.parametrize("mode", ["serving", "long prompt"])
def test_freed_activation_buffers_go_back_to_the_os_beside_a_long_prompt_or_once_idle(mode: str) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    run = subprocess.run(
        [sys.executable, "-c", FREED_BUFFERS, mode], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    kept, idle = (int(value) for value in run.stdout.split()[-2:])
    if mode == "long prompt":  # at once: beside the prompt's KV, next to nothing stays
        assert kept < 6 << 20, f"{kept / 2**20:.1f} MiB of freed buffers still resident"
    # serving, the heap may keep them for the next step's buffers, until the engine goes idle
    assert idle < 2 << 20, f"{idle / 2**20:.1f} MiB still resident once idle"


def test_the_mmap_threshold_follows_the_engines_long_prompts() -> None:
    thresholds = MallocThresholds()
    first, second = object(), object()
    thresholds.long_prompt(first, True)  # not installed: nothing set (tests and tools that never serve)
    assert thresholds.mmap_threshold is None
    thresholds.long_prompt(first, False)
    thresholds.install()
    assert thresholds.mmap_threshold == SERVING_MMAP_THRESHOLD_BYTES
    thresholds.long_prompt(first, True)
    thresholds.long_prompt(second, True)
    thresholds.long_prompt(first, False)
    assert thresholds.mmap_threshold == LONG_PROMPT_MMAP_THRESHOLD_BYTES  # while any engine has one
    thresholds.long_prompt(second, False)
    assert thresholds.mmap_threshold == SERVING_MMAP_THRESHOLD_BYTES


REUSED_BUFFERS = """
import resource, sys, threading, torch
from gateway.gc_heap import MALLOC_THRESHOLDS
MALLOC_THRESHOLDS.install()
if sys.argv[1] == "long prompt":
    MALLOC_THRESHOLDS.long_prompt(object(), True)
def step():  # a burst's prefill activations (156 tokens of SmolLM2) and a decode step's logits at 8 rows
    buffers = [torch.empty(156, 576).fill_(1.0) for _ in range(8)]
    buffers += [torch.empty(156, 1536).fill_(1.0) for _ in range(3)]
    buffers.append(torch.empty(8, 49152).fill_(1.0))
faults = []
def engine():  # in a thread of its own, as the engine runs (its own malloc arena)
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=engine)
thread.start()
thread.join()
print(faults[0])
"""


@pytest.mark.parametrize("mode", ["serving", "long prompt"])
def test_serving_reuses_a_steps_buffers_and_a_long_prompt_maps_them_anew(mode: str) -> None:
    """What the two thresholds trade: page faults per step against what the heap keeps beside a long prompt."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    run = subprocess.run(
        [sys.executable, "-c", REUSED_BUFFERS, mode], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    faults = int(run.stdout.split()[-1])
    if mode == "serving":
        assert faults < 200, f"{faults} page faults in 20 steps whose buffers could be reused"
    else:  # each buffer mapped and faulted in anew: ~1,800 pages of 4 KiB a step
        assert faults > 20 * 1000, f"only {faults} page faults in 20 steps of fresh mappings"
