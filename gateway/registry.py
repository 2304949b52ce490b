"""What the gateway can route to: models (one per ModelService) and their ready endpoints.

The Kubernetes half (`kube.py`) or a static file (`GATEWAY_MODELS_FILE`, `load_models_file`)
fills it through `upsert_model`, `remove_model`, `set_endpoints` and `mark_synced`; the HTTP
half reads it: `resolve` a request's `model` field, `pick` the least-loaded endpoint, `lease` it
while a request is in flight, `wait_for_endpoint` while a model scales up or its pods start.
Every method runs on the event loop (the Kubernetes half hands calls over with
`loop.call_soon_threadsafe` if it runs elsewhere), so nothing here takes a lock.

An endpoint is only ever one that `set_endpoints` gave for that model: the HTTP side never
sends a request anywhere else.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from .errors import AmbiguousModel, Unavailable, UnknownModel
from .keys import ModelKey

if TYPE_CHECKING:
    from .scaling import Scaler

TASKS = ("embed", "rerank")
ENGINES = ("tei", "reranker")


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway knows of one ModelService (from its spec and status)."""

    key: ModelKey
    task: str  # "embed" | "rerank"
    engine: str  # "tei" | "reranker" (status.engine, else from the spec)
    model_id: str  # spec.model, the Hugging Face id
    replicas: int  # spec.replicas, the desired count (0: scaled to zero)


@dataclass(frozen=True)
class Endpoint:
    """One ready pod of that ModelService's Service."""

    pod: str  # the pod's name (EndpointSlice targetRef.name)
    address: str  # "host:port" to send HTTP to (pod IP and port, or an override)


@dataclass
class _Load:
    """Per-model counters the balancing and /metrics read."""

    per_address: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    held: int = 0
    rotation: int = 0  # breaks ties between equally loaded endpoints in turn
    scale_pending: bool = False


class Registry:
    """What the gateway can route to. Its update methods are called on the event loop
    (the Kubernetes half runs there, or hands calls over with loop.call_soon_threadsafe).

    `home_namespace` is where a bare ModelService name is looked up (the gateway's own).
    """

    def __init__(self, home_namespace: str = "default"):
        self.home_namespace = home_namespace
        self._models: dict[ModelKey, ModelInfo] = {}
        self._endpoints: dict[ModelKey, tuple[Endpoint, ...]] = {}
        self._load: dict[ModelKey, _Load] = {}
        self._arrivals: dict[ModelKey, asyncio.Event] = {}
        # What `resolve` answered for a `model` field, until the models change.
        self._resolved: dict[str, ModelInfo] = {}
        self._synced = False

    # --- updates (the Kubernetes half, or a static file) ---------------------------------------

    def upsert_model(self, info: ModelInfo) -> None:
        self._models[info.key] = info
        self._resolved.clear()
        self._load.setdefault(info.key, _Load())

    def remove_model(self, key: ModelKey) -> None:
        self._models.pop(key, None)
        self._resolved.clear()
        self._endpoints.pop(key, None)
        self._wake(key)

    def set_endpoints(self, key: ModelKey, endpoints: Sequence[Endpoint]) -> None:
        """All READY endpoints of the model; replaces the previous set."""
        self._endpoints[key] = tuple(endpoints)
        if endpoints:
            load = self._load.setdefault(key, _Load())
            load.scale_pending = False
            self._wake(key)

    def mark_synced(self) -> None:
        """Every watch has listed once: /ready answers 200 from then on."""
        self._synced = True

    # --- reads (the HTTP half) ------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced

    def models(self) -> list[ModelInfo]:
        return sorted(self._models.values(), key=lambda info: info.key)

    def endpoints(self, key: ModelKey) -> tuple[Endpoint, ...]:
        return self._endpoints.get(key, ())

    def resolve(self, model: str) -> ModelInfo:
        """The model a request's `model` field names: a ModelService name in the home
        namespace, `namespace/name`, or a Hugging Face id that exactly one ModelService serves.

        Raises UnknownModel (404) naming it, or AmbiguousModel (400) listing the candidates.
        """
        info = self._resolved.get(model)
        if info is None:
            info = self._resolved[model] = self._resolve(model)
        return info

    def _resolve(self, model: str) -> ModelInfo:
        namespace, _, name = model.rpartition("/")
        key = ModelKey(namespace, name) if namespace else ModelKey(self.home_namespace, model)
        if key in self._models:
            return self._models[key]
        serving = [info for info in self.models() if info.model_id == model]
        if len(serving) == 1:
            return serving[0]
        if serving:
            raise AmbiguousModel(model, [str(info.key) for info in serving])
        raise UnknownModel(f"model {model!r} not found")

    def in_flight(self, key: ModelKey) -> int:
        load = self._load.get(key)
        return load.in_flight if load else 0

    def held(self, key: ModelKey) -> int:
        load = self._load.get(key)
        return load.held if load else 0

    def pick(self, key: ModelKey, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        """The ready endpoint with the fewest requests in flight (ties in turn), leaving out
        `exclude`; None when there is none."""
        candidates = [e for e in self._endpoints.get(key, ()) if e not in exclude]
        if not candidates:
            return None
        load = self._load.setdefault(key, _Load())
        load.rotation += 1
        start = load.rotation % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda e: load.per_address.get(e.address, 0))

    @contextmanager
    def lease(self, key: ModelKey, endpoint: Endpoint) -> Iterator[None]:
        """Count one request in flight to `endpoint` while the block runs."""
        load = self._load.setdefault(key, _Load())
        load.per_address[endpoint.address] = load.per_address.get(endpoint.address, 0) + 1
        load.in_flight += 1
        try:
            yield
        finally:
            load.in_flight -= 1
            left = load.per_address[endpoint.address] - 1
            if left:
                load.per_address[endpoint.address] = left
            else:
                del load.per_address[endpoint.address]

    async def wait_for_endpoint(self, key: ModelKey, timeout: float, scaler: Scaler) -> None:
        """Hold the request until the model has a ready endpoint, at most `timeout` seconds.

        A model whose desired replicas are 0 is asked for one through `scaler` once, by the
        first request to wait, however many wait; a model with replicas > 0 is starting pods
        and is only waited for. Raises Unavailable (503, Retry-After) on timeout and
        UnknownModel if the model is removed meanwhile.
        """
        load = self._load.setdefault(key, _Load())
        deadline = time.monotonic() + timeout
        load.held += 1
        try:
            while not self._endpoints.get(key):
                info = self._models.get(key)
                if info is None:
                    raise UnknownModel(f"model {str(key)!r} was removed")
                if info.replicas == 0 and not load.scale_pending:
                    load.scale_pending = True
                    try:
                        await scaler.scale_from_zero(key)
                    except Exception:
                        load.scale_pending = False
                        raise
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(
                        f"model {str(key)!r} has no ready replica after {timeout:g} s"
                        + (" (scaling up from zero)" if info.replicas == 0 or load.scale_pending
                           else " (pods starting)")
                    )
                arrival = self._arrivals.setdefault(key, asyncio.Event())
                try:
                    await asyncio.wait_for(arrival.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
        finally:
            load.held -= 1
            if load.held == 0 and not self._endpoints.get(key):
                # Nobody waits any more: the next request may ask again.
                load.scale_pending = False

    def _wake(self, key: ModelKey) -> None:
        arrival = self._arrivals.pop(key, None)
        if arrival is not None:
            arrival.set()


def load_models_file(path: str | Path, registry: Registry) -> None:
    """Fill `registry` from a static JSON file (GATEWAY_MODELS_FILE), for running outside a
    cluster, in tests and in the benchmark, then mark it synced. The format:

        {"models": [{"name": "bge", "namespace": "default", "task": "rerank",
                     "engine": "tei", "model_id": "BAAI/bge-reranker-base",
                     "replicas": 1, "endpoints": ["127.0.0.1:8081", ...]}]}

    `namespace` defaults to the registry's home namespace, `replicas` to the number of
    endpoints; endpoint pods are named `<name>-<index>`.
    """
    document = json.loads(Path(path).read_text())
    for entry in document["models"]:
        if entry["task"] not in TASKS or entry["engine"] not in ENGINES:
            raise ValueError(f"{path}: {entry['name']}: task must be one of {TASKS}, "
                             f"engine one of {ENGINES}")
        key = ModelKey(entry.get("namespace", registry.home_namespace), entry["name"])
        addresses = entry.get("endpoints", [])
        registry.upsert_model(ModelInfo(
            key=key,
            task=entry["task"],
            engine=entry["engine"],
            model_id=entry.get("model_id", entry["name"]),
            replicas=entry.get("replicas", len(addresses)),
        ))
        registry.set_endpoints(
            key, [Endpoint(f"{key.name}-{i}", address) for i, address in enumerate(addresses)]
        )
    registry.mark_synced()
