"""The autoscaling loop: for each ModelService with spec.autoscaling enabled, read its demand
(demand.py), decide (policy.py), write spec.replicas, the status and an Event.

One background thread, like `handlers.Resync`: every second it looks at which ModelServices are
due (each every spec.autoscaling.scrapeIntervalSeconds) and, for each,
1. reads the ModelService and its pods (the Ready ones are read for demand), and the gateways'
   /metrics URLs (fixed, `--gateway-metrics-url`, and the pods of `--gateway-selector`);
2. adds the sample to the in-memory history and decides;
3. on a change: writes status.autoscaling (with lastScaleTime) first, then spec.replicas with a
   JSON patch that only applies over the count it decided from (so a count the gateway or a user
   wrote meanwhile is decided on again), then an Event `ScaledUp` / `ScaledDown` with the demand
   and the target; the reconcile that the new spec.replicas triggers resizes the Deployment.
   Without a change it writes status.autoscaling only when the reason or desired count changed,
   or the demand did and the last write is STATUS_EVERY_S old: an idle model costs no writes.

The history lives in memory: a restarted operator starts it anew, so it scales up at once but
scales down only after a whole scaleDownDelaySeconds of fresh samples (never on a window it did
not see). Only one operator replica may run this (the chart runs one, kopf standalone).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from ..api.models import DEFAULT_TARGET_REQUESTS, Autoscaling, parse_modelservice
from ..controller.clock import now
from ..controller.kube import Kube
from ..placement.builders import build_selector
from .demand import Reading, Scraper
from .policy import History, Policy, Reason, decide, observe, scaled

log = logging.getLogger(__name__)

STATUS_EVERY_S = 30.0


def policy_of(autoscaling: Autoscaling, engine: str) -> Policy:
    """spec.autoscaling with the engine's default target."""
    target = autoscaling.target_requests or DEFAULT_TARGET_REQUESTS[engine]
    return Policy(min_replicas=autoscaling.min_replicas, max_replicas=autoscaling.max_replicas,
                  target=float(target), window_s=float(autoscaling.window_seconds),
                  delay_s=float(autoscaling.scale_down_delay_seconds),
                  tolerance=float(autoscaling.scale_down_tolerance))


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    """Running, Ready and not being deleted: what the endpoint controller routes to."""
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and ready and not (pod.get("metadata") or {}).get("deletionTimestamp")


def autoscaling_status(policy: Policy, decision_replicas: int, reason: Reason, message: str, demand: float,
                       last_scale_time: str | None) -> dict[str, Any]:
    """status.autoscaling (models.AutoscalingStatus)."""
    status: dict[str, Any] = {"demand": round(demand, 2), "targetRequests": policy.target,
                              "desiredReplicas": decision_replicas, "reason": reason.value, "message": message}
    if last_scale_time is not None:
        status["lastScaleTime"] = last_scale_time
    return status


def status_due(old: Mapping[str, Any] | None, new: Mapping[str, Any], since_write: float) -> bool:
    """Whether status.autoscaling should be written: what was decided changed, or the demand did
    and the last write is STATUS_EVERY_S old."""
    old = old or {}
    keys = ("desiredReplicas", "reason", "targetRequests", "lastScaleTime")
    if any(old.get(k) != new.get(k) for k in keys):
        return True
    return old.get("demand") != new.get("demand") and since_write >= STATUS_EVERY_S


@dataclass
class _Model:
    history: History
    due: float
    pods: dict[str, float] = field(default_factory=dict)   # the last answer of each pod
    written: float = float("-inf")


@dataclass(frozen=True)
class GatewaySource:
    """Where the gateways' metrics are: fixed URLs, and the pods of a label selector in a namespace
    (read where the scraper's `address` says: their `http` port)."""

    urls: tuple[str, ...] = ()
    namespace: str | None = None
    selector: str | None = None


class Autoscaler:
    """See the module docstring. `track`/`forget` follow the ModelServices kopf reports (those
    without autoscaling are dropped at their first tick); `tick(namespace, name, now)` is one
    decision, for tests."""

    def __init__(self, kube: Kube, scraper: Scraper, gateways: GatewaySource = GatewaySource(),
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], str] | None = None):
        self.kube = kube
        self.scraper = scraper
        self.gateways = gateways
        self.clock = clock
        self.wall = wall or now
        self._models: dict[tuple[str, str], _Model] = {}
        self._tracked: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        autoscaling = (spec or {}).get("autoscaling") or {}
        with self._lock:
            if autoscaling and autoscaling.get("enabled", True):
                self._tracked.add((namespace, name))
            else:
                self._tracked.discard((namespace, name))
                self._models.pop((namespace, name), None)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._tracked.discard((namespace, name))
            self._models.pop((namespace, name), None)

    def _gateway_urls(self) -> list[str]:
        urls = list(self.gateways.urls)
        if self.gateways.selector and self.gateways.namespace:
            for pod in self.kube.list_pods(self.gateways.namespace, self.gateways.selector):
                if pod_is_ready(pod) and (address := self.scraper.address(pod)):
                    urls.append(f"http://{address}/metrics")
        return urls

    def tick(self, namespace: str, name: str, now: float) -> None:
        """Reads, decides and writes for one ModelService (module docstring)."""
        body = self.kube.get_modelservice(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return
        try:
            ms = parse_modelservice(body)
        except ValidationError:
            return
        autoscaling = ms.spec.autoscaling
        engine = ms.status.get("engine")
        if autoscaling is None or not autoscaling.enabled:
            self.forget(namespace, name)
            return
        with self._lock:
            state = self._models.setdefault((namespace, name), _Model(History(since=now), due=now))
            state.due = now + autoscaling.scrape_interval_seconds
        if engine not in DEFAULT_TARGET_REQUESTS:
            return   # not planned yet: the reconcile records the engine
        policy = policy_of(autoscaling, engine)
        pods = [p for p in self.kube.list_pods(namespace, build_selector(name)) if pod_is_ready(p)]
        reading: Reading = self.scraper.read(f"{namespace}/{name}", engine, pods, self._gateway_urls(), state.pods)
        state.pods = dict(reading.pods)
        state.history = observe(policy, state.history, now, reading.demand, reading.complete)
        current = ms.spec.replicas
        decision = decide(policy, state.history, current, now)
        old = ms.status.get("autoscaling") or {}
        last_scale = old.get("lastScaleTime")
        if decision.replicas != current:
            last_scale = self.wall()
        status = autoscaling_status(policy, decision.replicas, decision.reason, decision.message,
                                    decision.average, last_scale)
        if decision.replicas != current:
            self._write_status(namespace, name, status, now, state)
            if self.kube.scale(namespace, name, decision.replicas, expected=current):
                state.history = scaled(state.history, now)
                log.info("%s/%s: %s", namespace, name, decision.message)
                reason = "ScaledUp" if decision.replicas > current else "ScaledDown"
                try:
                    self.kube.post_event(body, reason, decision.message, self.wall())
                except ApiException as exc:
                    log.warning("%s/%s: could not post the %s Event: %s", namespace, name, reason, exc.reason)
        elif status_due(old, status, now - state.written):
            self._write_status(namespace, name, status, now, state)

    def _write_status(self, namespace: str, name: str, status: Mapping[str, Any], now: float, state: _Model) -> None:
        try:
            self.kube.set_autoscaling_status(namespace, name, status)
            state.written = now
        except ApiException as exc:   # no status yet (the reconcile writes the first): next tick
            log.debug("%s/%s: status.autoscaling not written: %s", namespace, name, exc.reason)

    def run_due(self, now: float) -> None:
        with self._lock:
            due = sorted(k for k in self._tracked if k not in self._models or self._models[k].due <= now)
        for namespace, name in due:
            try:
                self.tick(namespace, name, now)
            except Exception as exc:  # noqa: BLE001  (API down: the next interval tries again)
                log.warning("autoscaling of %s/%s failed: %s: %s", namespace, name, type(exc).__name__,
                            str(getattr(exc, "reason", None) or exc).splitlines()[0])
                with self._lock:
                    if (namespace, name) in self._models:
                        self._models[(namespace, name)].due = now + 5

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self.run_due(self.clock())
            self._stopped.wait(0.5)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="modelservice-autoscaler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.scraper.close()


def gateway_urls_of(value: str | None) -> tuple[str, ...]:
    """The comma list of --gateway-metrics-url / MODELSERVICE_GATEWAY_METRICS_URLS."""
    return tuple(u.strip() for u in (value or "").split(",") if u.strip())
