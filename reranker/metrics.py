"""Prometheus metrics, one registry per app, served at GET /metrics.

| metric | type | labels | what |
|---|---|---|---|
| reranker_requests_total | counter | endpoint, status | HTTP requests answered |
| reranker_request_duration_seconds | histogram | endpoint, status | time to answer them |
| reranker_queue_depth | gauge | | requests admitted, not yet answered |
| reranker_batch_documents | histogram | | documents per forward pass |
| reranker_batch_requests | histogram | | requests sharing a forward pass |
| reranker_batch_tokens | histogram | | token rows per forward pass |
| reranker_forward_seconds | histogram | | time of one forward pass |
| reranker_tokens_total | counter | | token rows scored (rate() = tokens/s) |
| reranker_prompt_cache_hits_total | counter | | requests in a pass whose prompt head (system prompt + instruction) was not computed for them |
| reranker_prompt_cache_misses_total | counter | | requests in a pass whose prompt head was computed for them |
| reranker_prompt_cache_rows | gauge | | token rows of prompt heads kept (RERANKER_PROMPT_CACHE_TOKENS at most) |

`endpoint` is the route path (/v1/rerank, /health, ...) or `other` for paths that match no
route, so a scan of random URLs cannot grow the label set.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .scheduler import PassReport

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "RequestMetrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "reranker_requests", "HTTP requests answered.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "reranker_request_duration_seconds",
            "Seconds from the request's arrival to its answer.",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "reranker_queue_depth",
            "Rerank requests admitted and not yet answered (tokenizing, queued or scored).",
            registry=r,
        )
        self.batch_documents = Histogram(
            "reranker_batch_documents",
            "Documents per forward pass.",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "reranker_batch_requests",
            "Requests whose documents share a forward pass.",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "reranker_batch_tokens",
            "Token rows per forward pass (documents plus each request's shared prompt).",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "reranker_forward_seconds",
            "Seconds per forward pass.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "reranker_tokens",
            "Token rows scored (each request's prompt once per pass, documents); rate() gives "
            "tokens per second.",
            registry=r,
        )
        self._prompt_cache: Callable[[], object | None] = lambda: None
        r.register(_PromptCacheCollector(lambda: self._prompt_cache()))

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def track_prompt_cache(self, stats: Callable[[], object | None]) -> None:
        """`stats()` gives hits, misses and rows (`engine.PromptCacheStats`), or None."""
        self._prompt_cache = stats

    def observe_pass(self, report: PassReport) -> None:
        self.batch_documents.observe(report.documents)
        self.batch_requests.observe(report.requests)
        self.batch_tokens.observe(report.rows)
        self.forward_seconds.observe(report.seconds)
        self.tokens.inc(report.rows)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PromptCacheCollector:
    """The engine's prompt-head cache counters, read at scrape time (zero without a cache)."""

    def __init__(self, stats: Callable[[], object | None]):
        self.stats = stats

    def describe(self):
        return self._families(None)

    def collect(self):
        return self._families(self.stats())

    @staticmethod
    def _families(stats):
        hits = CounterMetricFamily(
            "reranker_prompt_cache_hits",
            "Requests in a pass whose prompt head (system prompt and instruction) was read from "
            "the cache or computed for another request of the pass.",
        )
        misses = CounterMetricFamily(
            "reranker_prompt_cache_misses",
            "Requests in a pass whose prompt head was computed for them.",
        )
        rows = GaugeMetricFamily(
            "reranker_prompt_cache_rows", "Token rows of prompt heads whose keys and values are kept."
        )
        hits.add_metric([], getattr(stats, "hits", 0))
        misses.add_metric([], getattr(stats, "misses", 0))
        rows.add_metric([], getattr(stats, "rows", 0))
        return [hits, misses, rows]


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP answer by route and status.

    The route is the one the router matched (it records it in the request scope), so path
    parameters or unknown paths never become new label values. A request answered before
    routing (a body over the size limit) is labelled with its path when that is one of `paths`
    (the service's routes), else `other`.
    """

    def __init__(self, app, metrics: Metrics, paths: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = getattr(scope.get("route"), "path", None)
            if endpoint is None:  # answered before routing (a body over the limit)
                endpoint = scope.get("path") if scope.get("path") in self.paths else "other"
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)
