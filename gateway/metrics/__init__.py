"""Prometheus metrics for one app (GET /metrics): see gateway/metrics/gateway_metrics.py."""

from gateway.metrics.gateway_metrics import GatewayMetrics

__all__ = ["GatewayMetrics"]
