"""Garbage-collection pauses of the serving process, by generation, as a scrape-time histogram.

A full collection stops the event loop and the decode loop alike (see gateway/gc_heap.py); this series shows
whether they still happen and how long they take. prometheus-client's own GCCollector counts collections
and collected objects, but not their duration.

Observed from a gc callback, so it never takes a lock: a prometheus-client Histogram locks on every
observation, and a collection can start inside code that holds that very lock (a deadlock).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.gc_heap import CollectionTimer
from gateway.metrics.buckets import GC_PAUSE_BUCKETS, BucketCounts

GENERATIONS = (0, 1, 2)


class GcPauseCollector(Collector):
    """`timer` goes into gc.callbacks for the app's lifetime (install/remove); scrapes read the counts."""

    def __init__(self, *, pid: str | None = None) -> None:
        self.pid = pid
        self.pauses = {generation: BucketCounts(GC_PAUSE_BUCKETS) for generation in GENERATIONS}
        self.timer = CollectionTimer(self._observe)

    def _observe(self, generation: int, seconds: float) -> None:
        counts = self.pauses.get(generation)
        if counts is not None:
            counts.observe(seconds)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        extra, tail = (["pid"], [self.pid]) if self.pid else ([], [])
        family = HistogramMetricFamily(
            "gantry_gc_pause_seconds",
            "Python garbage collections of this process by generation (2 = full), and how long each held the GIL.",
            labels=["generation", *extra],
        )
        for generation, counts in self.pauses.items():
            family.add_metric([str(generation), *tail], counts.cumulative(), counts.total)
        yield family
