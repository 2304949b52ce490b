"""Thin kopf handlers around one reconcile().

* A ModelService is created, changed, or seen again after a restart: `reconcile()` validates its
  spec once (models.parse_modelservice), plans (placement/plan.py), builds the Deployment and Service
  (placement/builders.py), applies them (kube.py: server-side apply, owner references from kopf.adopt) and
  writes the status (status.py) only when it changed. Everything but the API calls and the clock
  is pure and takes the parsed ModelService and the Plan.
* A ModelService gets a NetworkPolicy as a third child when its spec.networkPolicy.enabled, or
  else the operator's default (`NetworkPolicyDefaults`, from the command line), says so; when it
  says no, the one the operator made for it is deleted.
* A child Deployment, Service or NetworkPolicy changes or disappears: `on_child_event()` puts back a deleted or
  hand-edited child and refreshes the status from the Deployment's; it never re-plans, it reuses
  the plan the status records for the current generation (status.recorded_plan).
* Events can be missed: a child deleted while the watch reconnects sends none that the operator
  sees (kopf lists again, and a missing object is just absent). `Resync` reads every ModelService
  the operator serves once per resync interval (jittered), with its Deployment and Service,
  (and NetworkPolicy), and runs `resync()`: compare, repair what is missing or drifted, write the status only when it
  changed, so a ModelService in sync costs reads and no writes.
* A pod the scheduler cannot place (PodScheduled=False, Unschedulable) triggers `resync()` of its
  ModelService, so the status names the scheduler's reason instead of a rollout in progress.

The API client (kube.Kube) is made once in the startup handler and reaches every handler through
kopf's `memo`; reconcile() and on_child_event() take it as their first argument.

Specs that cannot run raise kopf.PermanentError (retried only when the spec changes); a missing
GPU node raises kopf.TemporaryError (retried, nodes may join). A Deployment or Service the API
refuses (e.g. affinity terms it cannot read, which the CRD keeps as written) is `ApplyFailed`:
Ready=False with the API's message in the status, a Warning Event, and a retry after a delay that
doubles up to APPLY_BACKOFF_MAX_S, logged as one line without a traceback. The Deployment is
applied before the Service, so a refused Deployment leaves no Service behind; a Service refused
after its Deployment was applied is reported the same way (Degraded: the Deployment runs). Other
API failures are retried by kopf.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from typing import Any, Mapping, NoReturn

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from ..api.models import (
    GROUP,
    MANAGER,
    PLURAL,
    VERSION,
    ModelService,
    parse_modelcache,
    parse_modelservice,
)
from ..autoscaling.demand import Scraper, pod_address
from ..autoscaling.loop import Autoscaler, GatewaySource
from ..cache.builders import cache_mount
from ..placement.builders import (
    SELECTOR_LABEL,
    NetworkPolicyDefaults,
    PodDefaults,
    build_deployment,
    build_labels,
    build_network_policy,
    build_selector,
    build_service,
    drifted,
)
from ..placement.plan import (
    CACHE_MODEL_MISMATCH,
    CACHE_NOT_FOUND,
    CACHE_NOT_READY,
    Plan,
    PlanError,
    build_plan,
    invalid_spec,
    resolve_engine,
)
from ..placement.sharing import (
    MEMORY_RESOURCE,
    GpuShare,
    SharingMechanism,
    SharingRefused,
    build_claim_template,
    memory_to_advertise,
    plan_share,
    wants_share,
)
from ..placement.variants import AUTO
from .clock import now
from .kube import ApiFailure, Kube, api_failure, load_config
from .scope import SYSTEM_NAMESPACES, namespace_refusal
from .status import (
    build_invalid_status,
    build_status,
    recorded_plan,
    status_changed,
    unschedulable_message,
)

MANAGED = {"app.kubernetes.io/managed-by": MANAGER}
RETRY_NODES_S = 30
# A ModelService waiting for its ModelCache is reconciled by the cache's handler when a revision
# is complete; this retry is the safety net for an event missed meanwhile.
RETRY_CACHE_S = 60
# How often each ModelService is compared with its children when no event says anything changed
# (`--resync-seconds`, env MODELSERVICE_RESYNC_SECONDS; 0 turns it off). Each wait is drawn from
# [1 - RESYNC_JITTER, 1] x the interval, so ModelServices seen together spread out over time and
# a child lost unseen is back within one interval.
DEFAULT_RESYNC_S = 60.0
RESYNC_JITTER = 0.2
log = logging.getLogger(__name__)

APPLY_FAILED = "ApplyFailed"
APPLY_BACKOFF_S = 5
APPLY_BACKOFF_MAX_S = 300


class ApplyFailed(Exception):
    """The API refused a write for a ModelService: a child (the status then says so; retried), or
    the status itself (`retry` False: a ModelService named before the CRD checked names refuses
    every write, so only deleting it helps)."""

    def __init__(self, kind: str, failure: ApiFailure, retry: bool = True):
        self.kind = kind
        self.failure = failure
        self.retry = retry
        self.message = f"the API refused the {kind} ({failure.status} {failure.reason}): {failure.message}"
        super().__init__(self.message)


def apply_backoff(retry: int) -> float:
    """Seconds before retry number `retry` (0 for the first) of a refused apply: doubling, capped."""
    return float(min(APPLY_BACKOFF_MAX_S, APPLY_BACKOFF_S * 2 ** min(retry, 16)))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress in annotations only: the status belongs to the ModelService schema, which has no
    # room (and no preserve-unknown-fields) for kopf's own bookkeeping.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="serving.embedding-images.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="serving.embedding-images.io", key="last-handled-configuration")
    # Events only for problems: a healthy reconcile writes nothing but the objects and status.
    # kopf 1.45 posts only explicit kopf.warn()/event() calls (settings.posting.loggers is off),
    # and kopf.warn() only while this level allows WARNING: ApplyFailed's Event depends on it.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 300
    load_config()
    memo.kube = Kube()
    interval = memo.get("resync_seconds")  # from the command line (__main__), else the default
    memo.network_policy = memo.get("network_policy") or NetworkPolicyDefaults()
    memo.resync = Resync(memo.kube, DEFAULT_RESYNC_S if interval is None else float(interval),
                         network_policy=network_policy_defaults(memo), pod_defaults=pod_defaults(memo),
                         sharing=gpu_sharing(memo))
    memo.resync.start()
    # The autoscaling loop (autoscaling/loop.py); its sources from the command line (__main__).
    memo.autoscaler = Autoscaler(
        memo.kube, Scraper(memo.get("pod_address") or pod_address),
        GatewaySource(urls=tuple(memo.get("gateway_metrics_urls") or ()),
                      namespace=memo.get("gateway_namespace"), selector=memo.get("gateway_selector")))
    memo.autoscaler.start()


def network_policy_defaults(memo: kopf.Memo) -> NetworkPolicyDefaults:
    """The operator's NetworkPolicy defaults (from the command line, __main__), else none."""
    return memo.get("network_policy") or NetworkPolicyDefaults()


def pod_defaults(memo: kopf.Memo) -> PodDefaults:
    """The operator's pod settings (from the command line, __main__), else none."""
    return memo.get("pod_defaults") or PodDefaults()


def gpu_sharing(memo: kopf.Memo) -> SharingMechanism:
    """How GPU shares are asked for (--gpu-sharing, __main__), else DRA."""
    return memo.get("gpu_sharing") or SharingMechanism.DRA


@kopf.on.cleanup()
def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    if "resync" in memo:
        memo.resync.stop()
    if "autoscaler" in memo:
        memo.autoscaler.stop()


def write_status(kube: Kube, ms: ModelService, status: Mapping[str, Any],
                 resource_version: str | None = None) -> bool:
    """Writes the status when it differs from the one `ms` was read with; returns whether it
    wrote. With `resource_version`, only over that version of the ModelService (kube.replace_status)."""
    if not status_changed(ms.status, status):
        return False
    if resource_version is None:
        kube.replace_status(ms.namespace, ms.name, status)
    else:
        kube.replace_status(ms.namespace, ms.name, status, resource_version=resource_version)
    return True


def observed_status(kube: Kube, ms: ModelService, plan: Plan, deployment: Mapping[str, Any] | None,
                    *, service_exists: bool = True) -> dict[str, Any]:
    """The status of a planned ModelService from its live children. The pods are read only while
    some replicas are not ready, to name the scheduler's reason for those that wait."""
    ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    pods = (kube.list_pods(ms.namespace, build_selector(ms.name))
            if deployment is not None and ready < ms.spec.replicas else [])
    return build_status(ms, now=now(), plan=plan, deployment=deployment,
                        service_exists=service_exists, pods=pods)


def repair(kube: Kube, body: Mapping[str, Any], desired: dict[str, Any], live: Mapping[str, Any] | None,
           logger: logging.Logger | logging.LoggerAdapter) -> Mapping[str, Any]:
    """Applies the `desired` child when `live` is missing (None) or drifted from it; returns the
    child as it now is. A child in sync costs nothing."""
    if live is not None and not drifted(live, desired):
        return live
    logger.info("%s %s/%s %s: putting it back", desired["kind"], body["metadata"]["namespace"],
                desired["metadata"]["name"], "is missing" if live is None else "drifted")
    kopf.adopt([desired], owner=body)  # type: ignore[arg-type]
    return kube.apply(desired)


def _owned_by(child: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    uid = body["metadata"].get("uid")
    return any(ref.get("kind") == "ModelService" and ref.get("uid") == uid
               for ref in (child.get("metadata") or {}).get("ownerReferences") or [])


def ensure_network_policy(kube: Kube, body: Mapping[str, Any], ms: ModelService, defaults: NetworkPolicyDefaults,
                          live: Mapping[str, Any] | None, logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Puts back the ModelService's NetworkPolicy when it is missing (`live` None) or drifted, or,
    when the ModelService should have none, deletes the one it owns (a NetworkPolicy of the same
    name that someone else made is left alone)."""
    desired = build_network_policy(ms, defaults)
    if desired is not None:
        repair(kube, body, desired, live, logger)
    elif live is not None and _owned_by(live, body):
        logger.info("NetworkPolicy %s/%s: turned off, deleting it", ms.namespace, ms.name)
        kube.delete_network_policy(ms.namespace, ms.name, live["metadata"]["uid"])


def apply_children(kube: Kube, body: Mapping[str, Any], ms: ModelService, plan: Plan,
                   network_policy: NetworkPolicyDefaults,
                   logger: logging.Logger | logging.LoggerAdapter,
                   pod_defaults: PodDefaults = PodDefaults()) -> dict[str, Any]:
    """Applies the Deployment, then the Service, then the NetworkPolicy (or deletes the one it
    made when there should be none) of a plan, owned by `body`; returns the live Deployment.
    Raises ApplyFailed when the API refuses one (the next ones are not tried then)."""
    deployment = build_deployment(ms, plan, pod_defaults)
    service = build_service(ms)
    policy = build_network_policy(ms, network_policy)
    children = [deployment, service] + ([policy] if policy is not None else [])
    template = share_claim_template(ms, plan)
    if template is not None:  # before the Deployment whose pods' claims are made from it
        children.insert(0, template)
    kopf.adopt(children, owner=body)  # type: ignore[arg-type]
    live: dict[str, Any] = {}
    for child in children:
        try:
            applied = kube.apply(child)
        except ApiException as exc:
            raise ApplyFailed(child["kind"], api_failure(exc)) from None
        if child["kind"] == "Deployment":
            live = applied
    if policy is None:
        ensure_network_policy(kube, body, ms, network_policy, kube.get_network_policy(ms.namespace, ms.name),
                              logger)
    prune_claim_templates(kube, ms, template)
    return live


def share_claim_template(ms: ModelService, plan: Plan) -> dict[str, Any] | None:
    """The ResourceClaimTemplate of a plan whose pods take a DRA share of a GPU, else None."""
    share = plan.share
    if share is None or share.claim_template is None:
        return None
    return build_claim_template(ms.name, ms.namespace, build_labels(ms), share)


def prune_claim_templates(kube: Kube, ms: ModelService, keep: Mapping[str, Any] | None) -> None:
    """Deletes the ModelService's ResourceClaimTemplates other than `keep` (an older share's, or
    all of them once it no longer shares): pods made from them keep their own claims."""
    if not wants_share(ms.spec) and "gpuShare" not in ms.status:
        return  # never shared: nothing to list
    keep_name = (keep or {}).get("metadata", {}).get("name")
    for template in kube.list_claim_templates(ms.namespace or "default", build_selector(ms.name)):
        name = template["metadata"]["name"]
        if name != keep_name:
            kube.delete_claim_template(ms.namespace or "default", name)


def ensure_claim_template(kube: Kube, body: Mapping[str, Any], ms: ModelService, plan: Plan,
                          logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Puts back the ResourceClaimTemplate of a DRA share when it is missing (its spec is
    immutable: it cannot drift). Without one, new pods of the ModelService get no claim."""
    desired = share_claim_template(ms, plan)
    if desired is None:
        return
    names = {t["metadata"]["name"] for t in kube.list_claim_templates(ms.namespace or "default", build_selector(ms.name))}
    if desired["metadata"]["name"] not in names:
        repair(kube, body, desired, None, logger)


def advertise_gpu_memory(kube: Kube, nodes: list[dict[str, Any]],
                         logger: logging.Logger | logging.LoggerAdapter) -> list[dict[str, Any]]:
    """The device-plugin mode's memory accounting: puts each shared-GPU node's GPU memory in its
    MEMORY_RESOURCE capacity where it is missing or stale (the scheduler then packs the pods'
    requests of it); returns the nodes as they now are."""
    stale = memory_to_advertise(nodes)
    for name, mib in stale.items():
        logger.info("node %s: advertising %s=%d (its GPUs' memory, MiB)", name, MEMORY_RESOURCE, mib)
        kube.advertise_node_resource(name, MEMORY_RESOURCE, mib)
    return kube.list_nodes() if stale else nodes


def gpu_share(kube: Kube, ms: ModelService, mechanism: SharingMechanism) -> GpuShare | None:
    """The share of one GPU each pod takes (None: whole GPUs), from the spec, the estimate and,
    with a ModelCache, the bytes of its complete revision. PlanError when it cannot be planned."""
    if not wants_share(ms.spec):
        return None
    engine = resolve_engine(ms.spec.task, ms.spec.model, ms.spec.engine)
    cache_bytes = None
    ref = ms.spec.cache.model_cache if ms.spec.cache is not None else None
    if ref is not None:
        body = kube.get_modelcache(ms.namespace or "default", ref)
        raw = ((body or {}).get("status") or {}).get("bytes")
        cache_bytes = int(raw) if isinstance(raw, int) and raw > 0 else None
    try:
        return plan_share(ms.name, ms.spec, engine, mechanism, cache_bytes)
    except SharingRefused as refused:
        # With a ModelCache still downloading, its bytes will size the share: retried.
        raise PlanError(refused.reason, refused.message, retry=ref is not None) from None


def with_cache(kube: Kube, ms: ModelService, plan: Plan) -> Plan:
    """The plan with the ModelCache volume of spec.cache.modelCache, if any. PlanError while the
    cache does not exist (retried), holds another model, or has no complete revision yet
    (retried; the cache's handler reconciles its users the moment one is complete)."""
    ref = ms.spec.cache.model_cache if ms.spec.cache is not None else None
    if ref is None:
        return plan
    body = kube.get_modelcache(ms.namespace or "default", ref)
    if body is None:
        raise PlanError(CACHE_NOT_FOUND, f"spec.cache.modelCache: no ModelCache {ref} in namespace "
                        f"{ms.namespace}; create it (operator README, \"Model cache\")", retry=True)
    try:
        cache = parse_modelcache(body)
    except ValidationError:
        raise PlanError(CACHE_NOT_READY, f"ModelCache {ref} has an invalid spec (see its status)", retry=True) from None
    if cache.spec.model != ms.spec.model:
        raise PlanError(CACHE_MODEL_MISMATCH, f"spec.model is {ms.spec.model} but ModelCache {ref} holds "
                        f"{cache.spec.model}: name a cache of this model, or serve {cache.spec.model}")
    mount = cache_mount(cache)
    if mount is None:
        cached = next((c for c in cache.status.get("conditions") or [] if c.get("type") == "Cached"), {})
        why = f"{cached.get('reason')}: {cached.get('message')}" if cached else "not reconciled yet"
        raise PlanError(CACHE_NOT_READY, f"no pods until ModelCache {ref} holds {cache.spec.model}@"
                        f"{cache.spec.revision} ({why})", retry=True)
    return dataclasses.replace(plan, cache=mount)


def plan_failed(kube: Kube, ms: ModelService, error: PlanError, retry_s: float) -> NoReturn:
    """Reports a spec that cannot be planned (the status, with the Deployment an earlier plan left)
    and ends the reconcile: retried after `retry_s` when it may heal by itself, else at the next
    spec change."""
    write_status(kube, ms, build_status(ms, now=now(), error=error,
                                        deployment=kube.get_deployment(ms.namespace, ms.name)))
    if error.retry:
        raise kopf.TemporaryError(error.message, delay=retry_s) from error
    raise kopf.PermanentError(f"{error.reason}: {error.message}") from error


def reconcile(kube: Kube, body: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter,
              network_policy: NetworkPolicyDefaults = NetworkPolicyDefaults(),
              pod_defaults: PodDefaults = PodDefaults(),
              sharing: SharingMechanism = SharingMechanism.DRA) -> None:
    """Makes the children and the status match the ModelService (`network_policy`, `pod_defaults`:
    the operator's defaults; `sharing`: how GPU shares are asked for)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        ms = parse_modelservice(body)
    except ValidationError as exc:
        error = invalid_spec(exc)
        status = build_invalid_status(body, now=now(), error=error,
                                      deployment=kube.get_deployment(namespace, name))
        if status_changed(body.get("status") or {}, status):
            try:
                kube.replace_status(namespace, name, status)
            except ApiException as refused:
                if refused.status != 422:
                    raise
                raise ApplyFailed("status", api_failure(refused), retry=False) from None
        raise kopf.PermanentError(f"{error.reason}: {error.message}") from exc
    nodes = kube.list_nodes() if ms.spec.accelerator == AUTO else None
    try:
        share = gpu_share(kube, ms, sharing)
        if share is not None and share.mechanism == "DevicePlugin":
            nodes = advertise_gpu_memory(kube, nodes if nodes is not None else kube.list_nodes(), logger)
        plan = build_plan(ms.spec, nodes, previous=ms.status.get("nodeSelector"), share=share)
    except PlanError as error:
        plan_failed(kube, ms, error, RETRY_NODES_S)
    try:
        plan = with_cache(kube, ms, plan)
    except PlanError as error:
        plan_failed(kube, ms, error, RETRY_CACHE_S)
    try:
        live = apply_children(kube, body, ms, plan, network_policy, logger, pod_defaults)
    except ApplyFailed as failure:
        write_status(kube, ms, build_status(ms, now=now(), error=PlanError(APPLY_FAILED, failure.message),
                                            deployment=kube.get_deployment(namespace, name)))
        raise
    status = observed_status(kube, ms, plan, live)
    if write_status(kube, ms, status):
        logger.info("%s/%s: %s on %s (%s)", namespace, name, plan.engine, plan.variant, plan.image)
    # Deployment events that arrived between the apply and the status write were skipped (the
    # status held no plan for this generation yet), and a Deployment that became ready meanwhile
    # sends no more: read it once more, now that later events find the plan in the status.
    fresh = kube.get_deployment(namespace, name)
    if fresh is not None and fresh.get("status") != live.get("status"):
        written = dataclasses.replace(ms, status=status)
        write_status(kube, written, observed_status(kube, written, plan, fresh))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_modelservice(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, retry: int = 0,
                           **_: Any) -> None:
    refusal = namespace_refusal(body["metadata"]["namespace"],
                                memo.get("refused_namespaces", SYSTEM_NAMESPACES))
    if refusal is not None:  # nothing is read or applied in a refused namespace
        status = build_invalid_status(body, now=now(), error=refusal)
        if status_changed(body.get("status") or {}, status):
            memo.kube.replace_status(body["metadata"]["namespace"], body["metadata"]["name"], status)
        kopf.warn(body, reason=refusal.reason, message=refusal.message)
        logger.warning("%s: %s", refusal.reason, refusal.message)
        return
    try:
        reconcile(memo.kube, body, logger, network_policy_defaults(memo), pod_defaults(memo),
                  gpu_sharing(memo))
    except ApplyFailed as failure:
        kopf.warn(body, reason=APPLY_FAILED, message=failure.message)
        # kopf logs these errors as one line (no traceback); a TemporaryError is retried after `delay`.
        if not failure.retry:
            raise kopf.PermanentError(f"{APPLY_FAILED}: {failure.message}") from None
        raise kopf.TemporaryError(f"{APPLY_FAILED}: {failure.message}", delay=apply_backoff(retry)) from None


def cache_moved(kube: Kube, ms: ModelService, plan: Plan) -> bool:
    """Whether the ModelCache a recorded plan mounts now offers another revision (or is gone):
    the plan is then no longer current although the generation is the same, and a child that
    holds the new revision must not be "put back" to the old one. A reconcile (the cache's roll,
    or the resync's) records the new one."""
    ref = ms.spec.cache.model_cache if ms.spec.cache is not None else None
    if ref is None:
        return False
    body = kube.get_modelcache(ms.namespace or "default", ref)
    try:
        mount = cache_mount(parse_modelcache(body)) if body is not None else None
    except ValidationError:
        mount = None
    return mount != plan.cache


def _owner_name(child: Mapping[str, Any]) -> str | None:
    for ref in child.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "ModelService" and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return ref.get("name")
    return None


def on_child_event(kube: Kube, event_type: str | None, child: Mapping[str, Any],
                   logger: logging.Logger | logging.LoggerAdapter,
                   network_policy: NetworkPolicyDefaults = NetworkPolicyDefaults(),
                   pod_defaults: PodDefaults = PodDefaults()) -> None:
    """Repairs a deleted or drifted child (a NetworkPolicy: also deletes one turned off) and
    refreshes the status from the Deployment."""
    owner = _owner_name(child)
    namespace = child.get("metadata", {}).get("namespace")
    if owner is None or namespace is None:
        return
    body = kube.get_modelservice(namespace, owner)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    try:
        ms = parse_modelservice(body)
    except ValidationError:
        return  # an invalid spec is the ModelService handler's to report
    plan = recorded_plan(ms)
    if plan is None or cache_moved(kube, ms, plan):
        return  # the ModelService handler (or the cache's roll) has not finished: it owns the next step
    kind = child.get("kind")
    if kind == "NetworkPolicy":
        ensure_network_policy(kube, body, ms, network_policy, None if event_type == "DELETED" else child, logger)
        return
    desired = build_deployment(ms, plan, pod_defaults) if kind == "Deployment" else build_service(ms)
    live = repair(kube, body, desired, None if event_type == "DELETED" else child, logger)
    if kind == "Deployment":
        write_status(kube, ms, observed_status(kube, ms, plan, live))


def resync(kube: Kube, namespace: str, name: str, logger: logging.Logger | logging.LoggerAdapter,
           network_policy: NetworkPolicyDefaults = NetworkPolicyDefaults(),
           pod_defaults: PodDefaults = PodDefaults(),
           sharing: SharingMechanism = SharingMechanism.DRA) -> bool:
    """Compares one ModelService's Deployment, Service and NetworkPolicy with its recorded plan
    (and `network_policy`, the operator's defaults), puts back what is missing or drifted
    (deletes a NetworkPolicy turned off), and writes the status from the children that exist (only if it
    changed): in sync, it reads and writes nothing. Returns False when the ModelService is gone.

    A ModelService without a plan for its current generation is left to its own handler (kopf
    retries it), as are invalid specs and ModelServices being deleted."""
    body = kube.get_modelservice(namespace, name)
    if body is None:
        return False
    if body["metadata"].get("deletionTimestamp"):
        return True
    try:
        ms = parse_modelservice(body)
    except ValidationError:
        return True
    plan = recorded_plan(ms)
    if plan is None:
        return True
    if cache_moved(kube, ms, plan):
        # A ModelCache event was missed (the operator was down or cut off when a revision became
        # complete): plan again now, as the cache's handler would have.
        try:
            reconcile(kube, body, logger, network_policy, pod_defaults, sharing)
        except (kopf.TemporaryError, kopf.PermanentError, ApplyFailed) as exc:
            logger.warning("%s/%s: its ModelCache moved on; reconcile: %s", namespace, name, exc)
        return True
    deployment = kube.get_deployment(namespace, name)
    service = kube.get_service(namespace, name)
    try:
        ensure_claim_template(kube, body, ms, plan, logger)
        deployment = repair(kube, body, build_deployment(ms, plan, pod_defaults), deployment, logger)
        service = repair(kube, body, build_service(ms), service, logger)
        ensure_network_policy(kube, body, ms, network_policy, kube.get_network_policy(namespace, name), logger)
    finally:
        # Also when a repair failed: the status then says which child is missing. Only over the
        # version read above: a reconcile of a newer generation may have written since.
        write_status(kube, ms, observed_status(kube, ms, plan, deployment, service_exists=service is not None),
                     resource_version=body["metadata"].get("resourceVersion"))
    return True


class Resync:
    """Runs `resync()` for every ModelService the operator serves, each once per `interval_s`
    (jittered), in one background thread: a level-triggered safety net for events the watch
    missed. `track`/`forget` follow the ModelServices kopf reports (a relist after a reconnect
    reports them all again); one that has disappeared unseen is forgotten at its next resync.
    A failed resync logs one line and is tried again at the next interval."""

    def __init__(self, kube: Kube, interval_s: float, rng: random.Random | None = None,
                 network_policy: NetworkPolicyDefaults = NetworkPolicyDefaults(),
                 pod_defaults: PodDefaults = PodDefaults(),
                 sharing: SharingMechanism = SharingMechanism.DRA):
        self.kube = kube
        self.network_policy = network_policy
        self.pod_defaults = pod_defaults
        self.sharing = sharing
        self.interval_s = interval_s
        self._rng = rng or random.Random()
        self._due: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def _next(self, now: float) -> float:
        return now + self.interval_s * self._rng.uniform(1 - RESYNC_JITTER, 1)

    def track(self, namespace: str, name: str) -> None:
        with self._lock:
            self._due.setdefault((namespace, name), self._next(time.monotonic()))

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._due.pop((namespace, name), None)

    def run_due(self, now: float) -> None:
        """Resyncs the ModelServices due by `now` and schedules their next turn."""
        with self._lock:
            due = sorted(key for key, at in self._due.items() if at <= now)
            for key in due:
                self._due[key] = self._next(now)
        for namespace, name in due:
            try:
                if not resync(self.kube, namespace, name, log, self.network_policy, self.pod_defaults,
                              self.sharing):
                    self.forget(namespace, name)
            except Exception as exc:  # noqa: BLE001  (API down or refusing: the next turn retries)
                reason = getattr(exc, "reason", None) or str(exc)
                log.warning("resync of %s/%s failed (retried in %.0f s): %s: %s", namespace, name,
                            self.interval_s, type(exc).__name__, str(reason).splitlines()[0] if reason else "")

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self.run_due(time.monotonic())
            self._stopped.wait(1.0)  # no API call: only the schedule is looked at

    def start(self) -> None:
        if not self.enabled:
            log.info("periodic resync is off")
            return
        log.info("resyncing every ModelService every %.0f s (jitter %.0f%%)", self.interval_s, RESYNC_JITTER * 100)
        self._thread = threading.Thread(target=self._loop, name="modelservice-resync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@kopf.on.event(GROUP, VERSION, PLURAL)
def track_modelservice(event: Mapping[str, Any], namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    if event.get("type") == "DELETED":
        memo.resync.forget(namespace, name)
        memo.autoscaler.forget(namespace, name)
    elif namespace_refusal(namespace, memo.get("refused_namespaces", SYSTEM_NAMESPACES)) is None:
        memo.resync.track(namespace, name)
        memo.autoscaler.track(namespace, name, (event.get("object") or {}).get("spec") or {})
    else:
        memo.resync.track(namespace, name)


def _unschedulable(body: kopf.Body, **_: Any) -> bool:
    return unschedulable_message([body]) is not None


@kopf.on.event("", "v1", "pods", labels={**MANAGED, SELECTOR_LABEL: kopf.PRESENT}, when=_unschedulable)
def unschedulable_pod(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """A model pod the scheduler cannot place: the ModelService's status says why."""
    meta = body["metadata"]
    try:
        resync(memo.kube, meta["namespace"], meta["labels"][SELECTOR_LABEL], logger, network_policy_defaults(memo),
               pod_defaults(memo), gpu_sharing(memo))
    except ApiException as exc:
        logger.warning("could not report an unschedulable pod: %s", exc.reason)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                     **_: Any) -> None:
    try:
        on_child_event(memo.kube, event.get("type"), body, logger, network_policy_defaults(memo), pod_defaults(memo))
    except ApiException as exc:  # events are not retried by kopf: the next event (or resume) heals
        logger.warning("could not handle a Deployment event: %s", exc.reason)


@kopf.on.event("", "v1", "services", labels=MANAGED)
def service_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                  **_: Any) -> None:
    try:
        on_child_event(memo.kube, event.get("type"), body, logger, network_policy_defaults(memo), pod_defaults(memo))
    except ApiException as exc:
        logger.warning("could not handle a Service event: %s", exc.reason)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED)
def network_policy_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                         **_: Any) -> None:
    try:
        on_child_event(memo.kube, event.get("type"), body, logger, network_policy_defaults(memo), pod_defaults(memo))
    except ApiException as exc:
        logger.warning("could not handle a NetworkPolicy event: %s", exc.reason)
