"""Demand, read over HTTP from the model pods' and the gateway's own Prometheus metrics.

Each ready pod is asked for GET /metrics on its `http` container port (short timeouts); its
demand is what it holds: requests in flight plus queued.
* reranker: `reranker_queue_depth` (admitted and not yet answered: tokenizing, queued or scored);
* TEI 1.9: `te_queue_size` (waiting for a batch) plus the requests in flight from its counters,
  `te_request_count` - `te_request_success` - `te_request_failure` (summed over their labels;
  TEI 1.9 has no in-flight gauge). A request whose client went away is counted by none of the
  last two, so a TEI pod that saw cancelled requests reads a little busier than it is until it
  restarts: that errs on the side of capacity. The other way round, TEI counts some refusals
  as failures without counting the request (an empty `texts` or any `/rerank` on a model that
  is not a reranker: `te_request_failure` before `te_request_count`), which would leave the
  difference below zero for good and hide as many requests in flight. So the scraper keeps,
  per pod, the lowest difference it has read (a pod's true count in flight is never below
  zero, and the refusals only ever lower it): that is the pod's zero, and what it reads above
  it is in flight. The zero is exact once the pod has been idle at one scrape since its last
  such refusal, and never reads more than is in flight; it starts again when the pod's
  counters do (a restarted container).
The gateway adds `gateway_requests_held{model="<ns>/<name>"}`: requests waiting for a ready
replica (the signal from zero). Requests it has forwarded (`gateway_requests_in_flight`) are the
pods' requests seen from the gateway, for longer (from the forward to the last byte back, where
the pods see only their own part): the demand is the larger of the two, plus the held requests.
So traffic that bypasses the gateway still counts (the pods' sum), and traffic through it is
not under-read by the time a request spends between the gateway and the pod; nothing is counted
twice.

A pod or gateway that does not answer is not idle: the reading says it is incomplete (the policy
then never scales down on it) and the pod's last answer stands in for it.

A pod is read at the address `pod_address` gives (its IP and its `http` container port); the
Scraper takes another where pods are reached some other way (the tests' simulated pods, whose
stand-in processes listen on loopback: testkit/loopback.py).
"""
from __future__ import annotations

import logging
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

TIMEOUT_S = 1.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class MetricSample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_metrics(text: str) -> list[MetricSample]:
    """The samples of a Prometheus text exposition (comments and malformed lines skipped)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(match.group(3) or "")}
        samples.append(MetricSample(match.group(1), labels, value))
    return samples


def _total(samples: Iterable[MetricSample], *names: str) -> float:
    return sum(s.value for s in samples if s.name in names)


def tei_counted(samples: Sequence[MetricSample]) -> float:
    """TEI's `te_request_count` (every label): it only grows while the container runs."""
    return _total(samples, "te_request_count", "te_request_count_total")


def tei_in_flight(samples: Sequence[MetricSample]) -> float:
    """count - success - failure from TEI's counters, before any correction (may be below 0)."""
    return (tei_counted(samples)
            - _total(samples, "te_request_success", "te_request_success_total")
            - _total(samples, "te_request_failure", "te_request_failure_total"))


def pod_demand(engine: str, samples: Sequence[MetricSample], zero: float = 0.0) -> float:
    """Requests in flight plus queued at one pod of `engine` (module docstring); for TEI,
    `zero` is the pod's lowest counter difference seen (TeiZeros), 0 when none is known."""
    if engine == "reranker":
        return max(0.0, _total(samples, "reranker_queue_depth"))
    return max(0.0, _total(samples, "te_queue_size")) + max(0.0, tei_in_flight(samples) - min(zero, 0.0))


class TeiZeros:
    """Per TEI pod, the lowest `count - success - failure` read so far (module docstring), and
    the count it was read at, so that counters that start again (a restarted container) start
    the zero again."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, float]] = {}   # pod key -> (lowest, last count)

    def update(self, pod: str, samples: Sequence[MetricSample]) -> float:
        """The pod's zero after this reading (<= 0)."""
        counted, raw = tei_counted(samples), tei_in_flight(samples)
        lowest, last = self._seen.get(pod, (0.0, 0.0))
        if counted < last:            # the counters started again
            lowest = 0.0
        lowest = min(lowest, raw)
        self._seen[pod] = (lowest, counted)
        return lowest

    def keep(self, pods: Iterable[str]) -> None:
        """Forget the pods not named (gone)."""
        keep = set(pods)
        for pod in [p for p in self._seen if p not in keep]:
            del self._seen[pod]


def _of_model(samples: Sequence[MetricSample], name: str, model: str) -> float:
    return sum(s.value for s in samples if s.name == name and s.labels.get("model") == model)


def held(samples: Sequence[MetricSample], model: str) -> float:
    """Requests the gateway holds for `model` ("<namespace>/<name>")."""
    return _of_model(samples, "gateway_requests_held", model)


def forwarded(samples: Sequence[MetricSample], model: str) -> float:
    """Requests the gateway has sent to `model`'s pods and not yet seen answered."""
    return _of_model(samples, "gateway_requests_in_flight", model)


def pod_address(pod: Mapping[str, Any]) -> str | None:
    """host:port to read a pod's metrics at: its IP and the container port named http (None
    before it has an IP, or without that port)."""
    ip = (pod.get("status") or {}).get("podIP")
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "http" and ip:
                return f"{ip}:{port['containerPort']}"
    return None


# Turns a pod (the API's JSON) into the host:port its metrics are read at, or None: not read.
PodAddress = Callable[[Mapping[str, Any]], "str | None"]


def fetch(url: str, timeout: float = TIMEOUT_S) -> list[MetricSample] | None:
    """The samples at `url`, or None when it does not answer 200 within `timeout`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:   # noqa: S310 (http only)
            return parse_metrics(response.read(4 * 1024 * 1024).decode("utf-8", "replace"))
    except Exception as exc:  # noqa: BLE001  (refused, timed out, reset, not 200: all "no answer")
        log.debug("no metrics from %s: %s", url, exc)
        return None


@dataclass(frozen=True)
class Reading:
    """One scrape of a model: its demand, whether every ready pod and gateway answered, and each
    pod's demand by name (the last answers, kept for the next reading)."""

    demand: float
    complete: bool
    pods: Mapping[str, float]
    held: float = 0.0


class Scraper:
    """Reads a model's demand from its ready pods and the gateways (`gateway_urls`: their
    /metrics URLs, fixed or found by the caller), each pod at the address `address` gives
    (default: `pod_address`, its own; a pod it gives None is not read and the reading is
    incomplete)."""

    def __init__(self, address: PodAddress = pod_address, timeout: float = TIMEOUT_S, workers: int = 16):
        self.address = address
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelservice-scrape")
        self._zeros: dict[str, TeiZeros] = {}   # model -> its TEI pods' zeros

    def read(self, model: str, engine: str, pods: Sequence[Mapping[str, Any]], gateway_urls: Sequence[str],
             last: Mapping[str, float]) -> Reading:
        """`model` is "<namespace>/<name>"; `pods` its ready pods; `last` the previous reading's
        per-pod demand."""
        names = [p["metadata"]["name"] for p in pods]
        urls = [(f"http://{address}/metrics" if (address := self.address(p)) else None) for p in pods]
        pod_results = list(self._pool.map(lambda u: fetch(u, self.timeout) if u else None, urls))
        gateway_results = list(self._pool.map(lambda u: fetch(u, self.timeout), gateway_urls))
        complete = all(r is not None for r in pod_results + gateway_results)
        zeros = self._zeros.setdefault(model, TeiZeros())
        keys = [p["metadata"].get("uid") or p["metadata"]["name"] for p in pods]
        zeros.keep(keys)
        per_pod = {name: (pod_demand(engine, r, zeros.update(key, r) if engine != "reranker" else 0.0)
                          if r is not None else last.get(name, 0.0))
                   for name, key, r in zip(names, keys, pod_results)}
        answered = [r for r in gateway_results if r is not None]
        waiting = sum(held(r, model) for r in answered)
        through_gateway = sum(forwarded(r, model) for r in answered)
        return Reading(demand=max(sum(per_pod.values()), through_gateway) + waiting, complete=complete,
                       pods=per_pod, held=waiting)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
