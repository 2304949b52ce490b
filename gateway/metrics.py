"""Prometheus metrics: what the autoscaler reads.

Per model (`model` = `namespace/name`, empty when the request named no known model):
- `gateway_requests_total{model, route, status}`: answered requests by route and status;
- `gateway_request_duration_seconds{model, route}`: latency, arrival to last byte;
- `gateway_requests_in_flight{model}`: requests sent to the model's pods and not yet answered;
- `gateway_requests_held{model}`: requests waiting for a ready replica (scale from zero, pods
  starting);
- `gateway_ready_endpoints{model}`: ready endpoints the gateway routes to.
The gauges are read from the registry when scraped, so they cannot drift from what it holds.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .registry import Registry

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _RegistryCollector:
    def __init__(self, registry: Registry):
        self.registry = registry

    def collect(self):
        in_flight = GaugeMetricFamily(
            "gateway_requests_in_flight", "Requests sent to the model's pods, not yet answered",
            labels=["model"],
        )
        held = GaugeMetricFamily(
            "gateway_requests_held", "Requests waiting for a ready replica of the model",
            labels=["model"],
        )
        ready = GaugeMetricFamily(
            "gateway_ready_endpoints", "Ready endpoints of the model", labels=["model"]
        )
        for info in self.registry.models():
            label = [str(info.key)]
            in_flight.add_metric(label, self.registry.in_flight(info.key))
            held.add_metric(label, self.registry.held(info.key))
            ready.add_metric(label, len(self.registry.endpoints(info.key)))
        yield in_flight
        yield held
        yield ready


class GatewayMetrics:
    """The metrics of one gateway app, in a registry of their own (tests run several apps)."""

    def __init__(self, registry: Registry):
        self.prometheus = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests", "Answered requests", ["model", "route", "status"],
            registry=self.prometheus,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds", "Seconds from arrival to the last byte answered",
            ["model", "route"], buckets=LATENCY_BUCKETS, registry=self.prometheus,
        )
        self.prometheus.register(_RegistryCollector(registry))
        # The labelled children of each (model, route, status) seen: `labels()` validates and
        # looks them up under a lock, which is most of what counting a request costs.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, model: str, route: str, status: int, seconds: float) -> None:
        children = self._children.get((model, route, status))
        if children is None:
            children = self._children[model, route, status] = (
                self.requests.labels(model, route, str(status)),
                self.latency.labels(model, route),
            )
        requests, latency = children
        requests.inc()
        latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.prometheus)
