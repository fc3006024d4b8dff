"""Per-replica series of `kind: upstream` models, read at scrape time from each loaded entry's replica pool
(`replica_series()` on its handle: each replica as /admin describes it, plus its latency histogram): requests,
errors, outstanding requests, health state and latency.

Labels: `model` (the entry's id) and `replica` (its URL without credentials or query), plus `pid` in
multiprocess mode like the other scrape-time gauges.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from gateway.upstream.replicas import REPLICA_STATES


def replica_families(entries: Iterable[Any], pid: str | None) -> Iterator[Metric]:
    extra, tail = (["pid"], [pid]) if pid else ([], [])
    labels = ["model", "replica", *extra]
    requests = CounterMetricFamily(
        "gantry_upstream_replica_requests", "Requests sent to the upstream replica (retries included).", labels=labels
    )
    errors = CounterMetricFamily(
        "gantry_upstream_replica_errors",
        "Connect errors, timeouts, 5xx answers and broken streams of the upstream replica.",
        labels=labels,
    )
    outstanding = GaugeMetricFamily(
        "gantry_upstream_replica_outstanding", "Requests the upstream replica is answering now.", labels=labels
    )
    state = GaugeMetricFamily(
        "gantry_upstream_replica_state",
        "1 for the health state the upstream replica is in (up, down, ejected), 0 for the others.",
        labels=[*labels[:2], "state", *extra],
    )
    latency = HistogramMetricFamily(
        "gantry_upstream_replica_latency_seconds",
        "From sending a request to the replica's answer (its first event when streamed), successful ones only.",
        labels=labels,
    )
    for entry in entries:
        series = getattr(entry.served, "replica_series", None)
        if not callable(series):
            continue
        for replica in series():
            key = [entry.name, replica["url"]]
            requests.add_metric([*key, *tail], replica["requests"])
            errors.add_metric([*key, *tail], replica["errors"])
            outstanding.add_metric([*key, *tail], replica["outstanding"])
            for each in REPLICA_STATES:
                state.add_metric([*key, each, *tail], 1.0 if replica["health"] == each else 0.0)
            counts = replica["latency"]
            latency.add_metric([*key, *tail], counts.cumulative(), counts.total)
    yield from (requests, errors, outstanding, state, latency)
