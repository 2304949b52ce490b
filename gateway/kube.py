"""The gateway's Kubernetes half: what may be routed, from watches, and scale from zero.

`run_sources(settings, registry)` keeps the `Registry` equal to the cluster: the ModelServices
of the served namespaces (`GATEWAY_NAMESPACES`, `*` for every namespace) and the ready endpoints
of their Services, from the EndpointSlices the endpoint controller writes (label
`kubernetes.io/service-name=<ModelService name>`). Both are watched, never polled: each watch
lists once, then follows the changes from that list's resourceVersion; an expired
resourceVersion (410 Gone) or any other error lists again, so the registry converges from what
exists, not from the events it happened to see. Once every watch has listed, `mark_synced()`.

Only endpoints whose `conditions.ready` is true are routed: a pod failing its readiness probe,
or terminating, leaves the registry when the endpoint controller says so.

`KubeScaler` asks for one replica of a ModelService at zero through its scale subresource.

The `kubernetes` client is synchronous: each watch runs in a daemon thread of its own (not the
event loop's default executor, which the HTTP side needs) and hands every change over to the
event loop with `call_soon_threadsafe`, where all state lives; nothing here takes a lock.

Where a ready pod's requests go is `PodAddresses`'s to say: the address its EndpointSlice
gives. `run_sources` takes another where pods are reached some other way (the tests' simulated
pods, whose stand-in processes listen on loopback: testkit/loopback.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import kubernetes
from kubernetes.client.exceptions import ApiException

from .registry import Endpoint, ModelInfo, ModelKey, Registry

log = logging.getLogger("gateway.kube")

# The ModelService API (the operator's modelservice.api.models holds the same; a unit test checks).
GROUP = "serving.embedding-images.io"
VERSION = "v1alpha1"
PLURAL = "modelservices"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# A Qwen3-Reranker runs on the reranker engine, everything else on TEI: the operator's
# modelservice.placement.plan.resolve_engine for engine `auto` (a unit test checks they agree).
QWEN3_RERANKER = re.compile(r"qwen3-reranker", re.IGNORECASE)
ALL_NAMESPACES = "*"
# A watch request ends after this many seconds and is reopened from the last resourceVersion, so
# a connection that died silently is noticed.
WATCH_SECONDS = 240
LIST_SECONDS = 60
RETRY_SECONDS = (0.5, 1, 2, 5, 10)


def load_config() -> kubernetes.client.ApiClient:
    """An API client: in-cluster credentials when running in a pod, else the current kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    client = kubernetes.client.ApiClient()
    client.user_agent = f"embedding-images-gateway/{client.user_agent}"
    return client


# --- from API objects to registry values (pure) --------------------------------------------------

def resolve_engine(task: str, model: str, engine: str) -> str:
    """The engine of a ModelService the operator has not reported yet (`engine: auto`)."""
    if engine != "auto":
        return engine
    return "reranker" if task == "rerank" and QWEN3_RERANKER.search(model) else "tei"


def model_info(obj: Mapping[str, Any]) -> ModelInfo:
    """What the registry keeps of one ModelService: its spec, and the engine the operator chose
    (status.engine) when it has reported one."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    status = obj.get("status") or {}
    task = spec.get("task", "")
    model = spec.get("model", "")
    return ModelInfo(
        key=ModelKey(meta["namespace"], meta["name"]),
        task=task,
        engine=status.get("engine") or resolve_engine(task, model, spec.get("engine", "auto")),
        model_id=model,
        replicas=int(spec.get("replicas", 1)),
    )


class PodAddress(NamedTuple):
    """A ready endpoint as the EndpointSlice gives it."""

    pod: str
    address: str   # "ip:port", "[ipv6]:port"


def ready_addresses(slice_: Mapping[str, Any]) -> tuple[PodAddress, ...]:
    """The ready endpoints of one EndpointSlice, on the Service's port named `http` (the
    operator's only port; a slice with one unnamed port uses that). An endpoint is ready only
    when `conditions.ready` is true: unknown and terminating ones are left out."""
    ports = slice_.get("ports") or []
    unnamed = ports[0] if len(ports) == 1 and not ports[0].get("name") else None
    port = next((p for p in ports if p.get("name") == "http"), unnamed)
    if port is None or port.get("port") is None:
        return ()
    found = []
    for ep in slice_.get("endpoints") or []:
        if (ep.get("conditions") or {}).get("ready") is not True:
            continue
        ref = ep.get("targetRef") or {}
        for ip in ep.get("addresses") or []:
            host = f"[{ip}]" if ":" in ip else ip
            found.append(PodAddress(ref.get("name") or ip, f"{host}:{port['port']}"))
    return tuple(found)


class PodAddresses:
    """Turns a ready pod into the address the gateway sends its requests to: the pod's own, as
    its EndpointSlice gives it. The one place the gateway makes that choice.

    `address(namespace, pod)` is that address, or None for a pod not to be routed. `watch(changed)`
    runs as long as the sources do and calls `changed()` whenever addresses change other than
    through an EndpointSlice (then every model's endpoints are computed again); a pod's own
    address changes only with its slice, so here it never calls it.
    """

    def address(self, namespace: str, pod: PodAddress) -> str | None:
        return pod.address

    async def watch(self, changed: Callable[[], None]) -> None:
        await asyncio.Event().wait()


# --- the state on the event loop -----------------------------------------------------------------

class SliceKey(NamedTuple):
    namespace: str
    name: str


@dataclass(frozen=True)
class SliceState:
    service: str
    ready: tuple[PodAddress, ...]


class Sources:
    """The watched objects, kept on the event loop, pushed into the registry.

    Every watch delivers a full list (`listed`) and then single changes (`changed`); the
    registry gets only what changed, and its endpoints of a model are recomputed from every
    slice of that model's Service, whichever arrived first.
    """

    def __init__(self, registry: Registry, watches: int, addresses: PodAddresses | None = None):
        self.registry = registry
        self.addresses = addresses or PodAddresses()
        self.models: dict[ModelKey, ModelInfo] = {}
        self.slices: dict[SliceKey, SliceState] = {}
        self.pushed: dict[ModelKey, tuple[Endpoint, ...]] = {}
        self._unlisted = watches
        self._listed: set[str] = set()

    # ModelServices -------------------------------------------------------------------------

    def list_models(self, watch: str, namespace: str | None, items: Sequence[Mapping[str, Any]]) -> None:
        infos = {info.key: info for info in map(model_info, items)}
        for key in [k for k in self.models if namespace is None or k.namespace == namespace]:
            if key not in infos:
                self._remove_model(key)
        for info in infos.values():
            self._upsert_model(info)
        self._mark_listed(watch)

    def model_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        info = model_info(obj)
        if kind == "DELETED":
            self._remove_model(info.key)
        else:
            self._upsert_model(info)

    def _upsert_model(self, info: ModelInfo) -> None:
        if self.models.get(info.key) != info:
            self.models[info.key] = info
            self.registry.upsert_model(info)
        self._push(info.key)

    def _remove_model(self, key: ModelKey) -> None:
        if self.models.pop(key, None) is not None:
            self.pushed.pop(key, None)
            self.registry.remove_model(key)

    # EndpointSlices ------------------------------------------------------------------------

    def list_slices(self, watch: str, namespace: str | None, items: Sequence[Mapping[str, Any]]) -> None:
        touched = {ModelKey(k.namespace, s.service) for k, s in self.slices.items()
                   if namespace is None or k.namespace == namespace}
        for key in [k for k in self.slices if namespace is None or k.namespace == namespace]:
            del self.slices[key]
        for obj in items:
            touched.add(self._store_slice(obj))
        for key in touched:
            self._push(key)
        self._mark_listed(watch)

    def slice_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        key = SliceKey(meta["namespace"], meta["name"])
        old = self.slices.pop(key, None)
        touched = {ModelKey(key.namespace, old.service)} if old else set()
        if kind != "DELETED":
            touched.add(self._store_slice(obj))
        for model in touched:
            self._push(model)

    def _store_slice(self, obj: Mapping[str, Any]) -> ModelKey:
        meta = obj["metadata"]
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL, "")
        self.slices[SliceKey(meta["namespace"], meta["name"])] = SliceState(service, ready_addresses(obj))
        return ModelKey(meta["namespace"], service)

    # registry ------------------------------------------------------------------------------

    def _push(self, key: ModelKey) -> None:
        """Gives the registry the model's ready endpoints when they differ from the last push."""
        if key not in self.models:
            return
        ready: dict[str, PodAddress] = {}   # a pod in two slices (while they are rebalanced) once
        for skey, state in self.slices.items():
            if skey.namespace == key.namespace and state.service == key.name:
                for p in state.ready:
                    ready.setdefault(p.pod, p)
        endpoints = tuple(sorted((Endpoint(p.pod, address) for p in ready.values()
                                  if (address := self.addresses.address(key.namespace, p)) is not None),
                                 key=lambda e: e.pod))
        if self.pushed.get(key) != endpoints:
            self.pushed[key] = endpoints
            self.registry.set_endpoints(key, endpoints)

    def push_all(self) -> None:
        for key in list(self.models):
            self._push(key)

    def _mark_listed(self, watch: str) -> None:
        if watch not in self._listed:
            self._listed.add(watch)
            if len(self._listed) == self._unlisted:
                log.info("synced: %d ModelServices", len(self.models))
                self.registry.mark_synced()


# --- watches in threads --------------------------------------------------------------------------

class _Gone(Exception):
    """The watch's resourceVersion expired (410): list again."""


class Watcher:
    """One list-then-watch loop in a daemon thread, handing results to the event loop.

    `list_fn` is a `kubernetes` client list method, called with `args` and `kwargs` (e.g. a label
    selector); `on_list(items)` and `on_event(type, obj)` run on the loop. Errors are logged and followed by a fresh list after a short back-off.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, list_fn: Callable[..., Any],
                 args: tuple, on_list: Callable[[list], None],
                 on_event: Callable[[str, dict], None], kwargs: Mapping[str, Any] | None = None):
        self.name = name
        self.kwargs = dict(kwargs or {})
        self.loop = loop
        self.list_fn = list_fn
        self.args = args
        self.on_list = on_list
        self.on_event = on_event
        self.stopping = threading.Event()
        self.done: asyncio.Future = loop.create_future()
        self._watch: kubernetes.watch.Watch | None = None
        self.thread = threading.Thread(target=self._run, name=f"watch {name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        watch = self._watch
        if watch is not None:
            watch.stop()   # shuts the socket down: the blocked read returns

    def _hand(self, fn: Callable, *args: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    listing = json.loads(self.list_fn(*self.args, **self.kwargs, _preload_content=False,
                                                      _request_timeout=LIST_SECONDS).data)
                    self._hand(self.on_list, listing.get("items") or [])
                    failures = 0
                    self._follow(listing["metadata"]["resourceVersion"])
                except _Gone:
                    log.info("%s: resourceVersion expired, listing again", self.name)
                except Exception as exc:   # the API unreachable, 403, a dropped connection
                    if self.stopping.is_set():
                        break
                    delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                    failures += 1
                    log.warning("%s: %s; listing again in %g s", self.name, _describe(exc), delay)
                    self.stopping.wait(delay)
        finally:
            self._hand(lambda: self.done.done() or self.done.set_result(None))

    def _follow(self, resource_version: str) -> None:
        """Follows changes from `resource_version` until stopped; raises on errors."""
        while not self.stopping.is_set():
            watch = self._watch = kubernetes.watch.Watch()
            try:
                for event in watch.stream(self.list_fn, *self.args, **self.kwargs, resource_version=resource_version,
                                          allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
                                          _request_timeout=WATCH_SECONDS + 30):
                    # raw_object: the API's JSON (the client's own ERROR handling needs the
                    # deserializing mode, which also builds typed objects nothing here reads).
                    kind, obj = event["type"], event["raw_object"]
                    if kind == "BOOKMARK":
                        resource_version = obj["metadata"]["resourceVersion"]
                        continue
                    resource_version = obj["metadata"]["resourceVersion"]
                    self._hand(self.on_event, kind, obj)
            except ApiException as exc:
                if exc.status == 410:
                    raise _Gone() from exc
                raise
            finally:
                self._watch = None


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _list_functions(client: kubernetes.client.ApiClient, namespace: str | None):
    """The list calls of the two watched kinds, for one namespace or (None) all of them."""
    custom = kubernetes.client.CustomObjectsApi(client)
    discovery = kubernetes.client.DiscoveryV1Api(client)
    if namespace is None:
        return ((custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)),
                (discovery.list_endpoint_slice_for_all_namespaces, ()))
    return ((custom.list_namespaced_custom_object, (GROUP, VERSION, namespace, PLURAL)),
            (discovery.list_namespaced_endpoint_slice, (namespace,)))


def watched_namespaces(settings: Any) -> list[str | None]:
    """The served namespaces; `*` (GATEWAY_NAMESPACES) is every namespace, given as [None]."""
    namespaces = list(settings.served_namespaces)
    return [None] if ALL_NAMESPACES in namespaces else namespaces


async def run_sources(settings: Any, registry: Registry,
                      api_client: kubernetes.client.ApiClient | None = None,
                      addresses: PodAddresses | None = None) -> None:
    """Keeps `registry` equal to the cluster until cancelled (see the module docstring); each
    ready pod routed at the address `addresses` gives (default: its own)."""
    loop = asyncio.get_running_loop()
    client = api_client or load_config()
    namespaces = watched_namespaces(settings)
    addresses = addresses or PodAddresses()
    sources = Sources(registry, watches=2 * len(namespaces), addresses=addresses)
    watchers: list[Watcher] = []
    for namespace in namespaces:
        where = namespace or "all namespaces"
        (list_models, model_args), (list_slices, slice_args) = _list_functions(client, namespace)
        watchers.append(Watcher(
            f"modelservices in {where}", loop, list_models, model_args,
            on_list=lambda items, w=f"ms/{namespace}", ns=namespace: sources.list_models(w, ns, items),
            on_event=sources.model_event))
        watchers.append(Watcher(
            f"endpointslices in {where}", loop, list_slices, slice_args,
            on_list=lambda items, w=f"eps/{namespace}", ns=namespace: sources.list_slices(w, ns, items),
            on_event=sources.slice_event))
    log.info("watching ModelServices and EndpointSlices in %s",
             ", ".join(ns or "all namespaces" for ns in namespaces))
    for watcher in watchers:
        watcher.start()
    try:
        await addresses.watch(sources.push_all)
    finally:
        for watcher in watchers:
            watcher.stop()
        # A thread blocked in a list call ends with it (LIST_SECONDS at most); daemon threads
        # never keep the process alive.
        await asyncio.wait([w.done for w in watchers], timeout=5)


# --- scale from zero -----------------------------------------------------------------------------

# Reads and conditional writes of a scale that keeps changing under the gateway (status writes
# bump the resourceVersion too) before it gives up; each round trip is a few milliseconds.
SCALE_ATTEMPTS = 5


class KubeScaler:
    """Scale from zero through the ModelService's scale subresource.

    `scale_from_zero(key)` reads the scale and, only while its replicas are 0, writes 1 with a
    JSON patch whose `test` of the resourceVersion it read makes the write conditional on the
    server: a user (or the other gateway replica) who set replicas meanwhile is never overridden;
    a conflict that changed only something else (the operator writing the status) is read again
    and retried, up to SCALE_ATTEMPTS times. Calls for a model
    whose write is in flight wait for it instead of writing again, and once replicas is 1 later
    calls read it and write nothing: one write per model while the scale-up is pending. A
    failure (403, 404, the API unreachable) is logged, not raised: the held requests then time
    out with the 503 the HTTP side gives.
    """

    def __init__(self, settings: Any = None, api_client: kubernetes.client.ApiClient | None = None):
        self._client = api_client
        self._in_flight: dict[ModelKey, asyncio.Future] = {}
        self.writes = 0   # scale writes made, for the logs and tests

    @property
    def _custom(self) -> kubernetes.client.CustomObjectsApi:
        if self._client is None:
            self._client = load_config()
        return kubernetes.client.CustomObjectsApi(self._client)

    async def scale_from_zero(self, key: ModelKey) -> None:
        pending = self._in_flight.get(key)
        if pending is None:
            pending = self._in_flight[key] = asyncio.ensure_future(asyncio.to_thread(self._scale, key))
            pending.add_done_callback(lambda _: self._in_flight.pop(key, None))
        await asyncio.shield(pending)

    def _scale(self, key: ModelKey) -> None:
        custom = self._custom
        try:
            for _ in range(SCALE_ATTEMPTS):
                scale = json.loads(custom.get_namespaced_custom_object_scale(
                    GROUP, VERSION, key.namespace, PLURAL, key.name, _preload_content=False).data)
                if (scale.get("spec") or {}).get("replicas", 0) != 0:   # 0 is left out of the JSON
                    return
                try:
                    custom.patch_namespaced_custom_object_scale(
                        GROUP, VERSION, key.namespace, PLURAL, key.name,
                        [{"op": "test", "path": "/metadata/resourceVersion",
                          "value": scale["metadata"]["resourceVersion"]},
                         {"op": "add", "path": "/spec/replicas", "value": 1}],
                        _content_type="application/json-patch+json", _preload_content=False)
                except ApiException as exc:
                    if exc.status not in (409, 422):
                        raise
                    # Changed since it was read: by someone setting replicas (read again: not 0,
                    # nothing to do), or only by a status write (the operator's), which must
                    # not cost the held requests their scale-up: read again and retry.
                    log.info("scale from zero of %s: changed meanwhile, reading it again", key)
                    continue
                self.writes += 1
                log.info("scale from zero: %s replicas 0 -> 1", key)
                return
            log.warning("scale from zero of %s: changed under %d attempts in a row, not written",
                        key, SCALE_ATTEMPTS)
        except ApiException as exc:
            log.warning("scale from zero of %s failed: %s", key, _describe(exc))
        except Exception as exc:
            log.warning("scale from zero of %s failed: %s", key, _describe(exc))
