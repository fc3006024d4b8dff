"""Prometheus metrics for one app (GET /metrics): gateway/metrics/gateway_metrics.py.

Kept free of imports so that `gateway.metrics.buckets` can be used from the engines and upstream pools
without pulling in the registry.
"""
