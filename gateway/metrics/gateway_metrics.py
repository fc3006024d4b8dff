"""The gateway's Prometheus metrics, one CollectorRegistry per app (no module globals: several apps may live in
one process, as in the tests).

Three sources:
- every finished request's RequestRecord (gateway/accounting.py), observed once at its end: request counts,
  tokens, time to first token, end-to-end latency, and per sequence the queue wait, inter-token latencies and
  aborts;
- the registry's entries, read at scrape time (`ModelsCollector`): model state and load time, and from each
  loaded engine that offers `metrics_snapshot()` its running / waiting sequences, batch size and KV-cache bytes.
  Reading at scrape time keeps the engines free of metric calls in their decode loops;
- the process's garbage collections, timed by a gc callback (`GcPauseCollector`).

Multiprocess: with PROMETHEUS_MULTIPROC_DIR set before the process starts, prometheus-client keeps the counters
and histograms in files there and a scrape of any process sums all of them (its multiprocess mode); the
scrape-time gauges describe only the process that answers and carry its `pid`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.accounting import RequestRecord
from gateway.metrics.buckets import INTER_TOKEN_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS
from gateway.metrics.gc_metrics import GcPauseCollector
from gateway.metrics.upstream_metrics import replica_families
from gateway.registry import ModelRegistry, ModelState

logger = logging.getLogger(__name__)

UNMATCHED_ROUTE = "unmatched"  # a path no route serves: one label, however many paths clients try
NO_MODEL = "none"
NO_STATUS = "none"  # the client left before any response started
ANONYMOUS = "anonymous"  # no API key (none configured, or a public model)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


class GatewayMetrics:
    """The app's metrics; `observe` is a request observer (app.state.request_observers)."""

    def __init__(self, models: ModelRegistry) -> None:
        self.models = models
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gantry_requests",
            "HTTP requests answered, by model (its canonical id; none when no model was used), route template "
            "and status.",
            ["model", "route", "status"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gantry_rate_limited_requests",
            "Requests answered 429 (a key's rate or concurrency limit, or a full model queue), by API key name.",
            ["key_name"],
            registry=r,
        )
        self.prompt_tokens = Counter("gantry_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.generation_tokens = Counter(
            "gantry_generation_tokens", "Tokens generated (completion tokens).", ["model"], registry=r
        )
        self.ttft = Histogram(
            "gantry_time_to_first_token_seconds",
            "From the request's arrival to its first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "gantry_inter_token_latency_seconds",
            "Between consecutive output tokens of a sequence.",
            ["model"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "gantry_e2e_request_latency_seconds",
            "From a model request's arrival to its last byte sent.",
            ["model"],
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "gantry_request_queue_time_seconds",
            "A sequence's wait in the engine's queue, from admission to first being scheduled.",
            ["model"],
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        self.aborted = Counter(
            "gantry_sequences_aborted",
            "Sequences stopped before they finished: the client went away (or the server stopped them).",
            ["model"],
            registry=r,
        )
        self.pid = str(os.getpid()) if multiprocess_dir() else None
        self.models_collector = ModelsCollector(models, pid=self.pid)
        r.register(self.models_collector)
        self.gc_pauses = GcPauseCollector(pid=self.pid)  # its timer is installed by the app's lifespan
        r.register(self.gc_pauses)

    # ---- observation (once per finished request) ------------------------------------------------------
    def observe(self, record: RequestRecord) -> None:
        model = self._model_label(record)
        status = str(record.status) if record.status is not None else NO_STATUS
        self.requests.labels(model, record.route or UNMATCHED_ROUTE, status).inc()
        if record.status == 429:
            self.rate_limited.labels(record.key_name or ANONYMOUS).inc()
        if record.model is None:  # no model was used: nothing generated, nothing to time
            return
        self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        self.generation_tokens.labels(model).inc(record.completion_tokens)
        if record.ttft_seconds is not None:
            self.ttft.labels(model).observe(record.ttft_seconds)
        if record.duration_seconds is not None:
            self.e2e.labels(model).observe(record.duration_seconds)
        inter_token = self.inter_token.labels(model)
        for sequence in record.sequences:
            if sequence.queue_seconds is not None:
                self.queue.labels(model).observe(sequence.queue_seconds)
            for gap in sequence.token_gaps:
                inter_token.observe(gap)
            if sequence.finish == "abort":
                self.aborted.labels(model).inc()

    def _model_label(self, record: RequestRecord) -> str:
        """The model's canonical id, so its aliases add up in one series (only registered ids reach here)."""
        if record.model is None:
            return NO_MODEL
        try:
            return self.models.find(record.model).name
        except Exception:  # removed since: its id as the client gave it
            return record.model

    # ---- exposition -----------------------------------------------------------------------------------
    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type (text/plain 0.0.4 unless the scraper asks for OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._exposed()), content_type

    def _exposed(self) -> CollectorRegistry:
        if self.pid is None:
            return self.registry
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # every process's counters and histograms, summed
        merged.register(self.models_collector)
        merged.register(self.gc_pauses)
        return merged


class ModelsCollector(Collector):
    """Gauges read from the registry's entries at scrape time."""

    def __init__(self, models: ModelRegistry, *, pid: str | None = None) -> None:
        self.models = models
        self.pid = pid

    def describe(self) -> list[Metric]:
        return []  # collected fresh on every scrape; nothing to check for name clashes at registration

    def collect(self) -> Iterator[Metric]:
        extra = ["pid"] if self.pid else []
        tail = [self.pid] if self.pid else []

        def gauge(name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=[*labels, *extra])

        state = gauge("gantry_model_state", "1 for the state each model is in, 0 for the others.", "model", "state")
        load = gauge("gantry_model_load_seconds", "Duration of the model's last successful load.", "model")
        running = gauge("gantry_sequences_running", "Sequences the model's engine is decoding.", "model")
        waiting = gauge("gantry_sequences_waiting", "Sequences admitted and waiting for a decode slot.", "model")
        batch = gauge("gantry_batch_size", "Sequences in the engine's last decode step (0 when idle).", "model")
        kv = gauge("gantry_kv_cache_usage_bytes", "Memory held by the engine's KV cache.", "model")
        by_key = {"running": running, "waiting": waiting, "batch_size": batch, "kv_cache_bytes": kv}
        for entry in self.models.entries():
            for each in ModelState:
                state.add_metric([entry.name, each.value, *tail], 1.0 if entry.state is each else 0.0)
            if entry.load_seconds is not None:
                load.add_metric([entry.name, *tail], entry.load_seconds)
            for key, value in engine_snapshot(entry.served).items():
                if key in by_key:
                    by_key[key].add_metric([entry.name, *tail], float(value))
        yield from (state, load, running, waiting, batch, kv)
        yield from replica_families(self.models.entries(), self.pid)


def engine_snapshot(handle: Any) -> dict[str, float]:
    """A loaded model's `metrics_snapshot()` (its engine's, or the handle's own for other kinds); {} if none."""
    if handle is None:
        return {}
    for owner in (getattr(handle, "engine", None), handle):
        snapshot = getattr(owner, "metrics_snapshot", None)
        if callable(snapshot):
            try:
                return dict(snapshot())
            except Exception:  # a scrape never fails for one engine
                logger.exception("metrics snapshot of %r failed", owner)
                return {}
    return {}
