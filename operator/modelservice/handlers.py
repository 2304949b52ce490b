"""Thin kopf handlers around one reconcile().

* A ModelService is created, changed, or seen again after a restart: `reconcile()` validates its
  spec once (models.parse_modelservice), plans (plan.py), builds the Deployment and Service
  (resources.py), applies them (kube.py: server-side apply, owner references from kopf.adopt) and
  writes the status (status.py) only when it changed. Everything but the API calls and the clock
  is pure and takes the parsed ModelService and the Plan.
* A child Deployment or Service changes or disappears: `on_child_event()` puts back a deleted or
  hand-edited child and refreshes the status from the Deployment's; it never re-plans, it reuses
  the plan the status records for the current generation (status.recorded_plan).

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
import datetime
import logging
from typing import Any, Mapping

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from .kube import ApiFailure, Kube, api_failure, load_config
from .models import GROUP, MANAGER, PLURAL, VERSION, ModelService, parse_modelservice
from .plan import Plan, PlanError, build_plan, invalid_spec
from .resources import build_deployment, build_service, drifted
from .status import build_invalid_status, build_status, recorded_plan, status_changed
from .variants import AUTO

MANAGED = {"app.kubernetes.io/managed-by": MANAGER}
RETRY_NODES_S = 30
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


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def write_status(kube: Kube, ms: ModelService, status: Mapping[str, Any]) -> bool:
    """Writes the status when it differs from the one `ms` was read with; returns whether it wrote."""
    if not status_changed(ms.status, status):
        return False
    kube.replace_status(ms.namespace, ms.name, status)
    return True


def apply_children(kube: Kube, body: Mapping[str, Any], ms: ModelService, plan: Plan) -> dict[str, Any]:
    """Applies the Deployment, then the Service, of a plan, owned by `body`; returns the live
    Deployment. Raises ApplyFailed when the API refuses one (the Service is not tried then)."""
    deployment = build_deployment(ms, plan)
    service = build_service(ms)
    kopf.adopt([deployment, service], owner=body)  # type: ignore[arg-type]
    live: dict[str, Any] = {}
    for child in (deployment, service):
        try:
            applied = kube.apply(child)
        except ApiException as exc:
            raise ApplyFailed(child["kind"], api_failure(exc)) from None
        live = live or applied
    return live


def reconcile(kube: Kube, body: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Makes the children and the status match the ModelService."""
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
        plan = build_plan(ms.spec, nodes, previous=ms.status.get("nodeSelector"))
    except PlanError as error:
        write_status(kube, ms, build_status(ms, now=now(), error=error,
                                            deployment=kube.get_deployment(namespace, name)))
        if error.retry:
            raise kopf.TemporaryError(error.message, delay=RETRY_NODES_S) from error
        raise kopf.PermanentError(f"{error.reason}: {error.message}") from error
    try:
        live = apply_children(kube, body, ms, plan)
    except ApplyFailed as failure:
        write_status(kube, ms, build_status(ms, now=now(), error=PlanError(APPLY_FAILED, failure.message),
                                            deployment=kube.get_deployment(namespace, name)))
        raise
    status = build_status(ms, now=now(), plan=plan, deployment=live)
    if write_status(kube, ms, status):
        logger.info("%s/%s: %s on %s (%s)", namespace, name, plan.engine, plan.variant, plan.image)
    # Deployment events that arrived between the apply and the status write were skipped (the
    # status held no plan for this generation yet), and a Deployment that became ready meanwhile
    # sends no more: read it once more, now that later events find the plan in the status.
    fresh = kube.get_deployment(namespace, name)
    if fresh is not None and fresh.get("status") != live.get("status"):
        written = dataclasses.replace(ms, status=status)
        write_status(kube, written, build_status(written, now=now(), plan=plan, deployment=fresh))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_modelservice(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, retry: int = 0,
                           **_: Any) -> None:
    try:
        reconcile(memo.kube, body, logger)
    except ApplyFailed as failure:
        kopf.warn(body, reason=APPLY_FAILED, message=failure.message)
        # kopf logs these errors as one line (no traceback); a TemporaryError is retried after `delay`.
        if not failure.retry:
            raise kopf.PermanentError(f"{APPLY_FAILED}: {failure.message}") from None
        raise kopf.TemporaryError(f"{APPLY_FAILED}: {failure.message}", delay=apply_backoff(retry)) from None


def _owner_name(child: Mapping[str, Any]) -> str | None:
    for ref in child.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "ModelService" and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return ref.get("name")
    return None


def on_child_event(kube: Kube, event_type: str | None, child: Mapping[str, Any],
                   logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Repairs a deleted or drifted child and refreshes the status from the Deployment."""
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
    if plan is None:
        return  # the ModelService handler has not finished this generation: it owns the next step
    kind = child.get("kind")
    desired = build_deployment(ms, plan) if kind == "Deployment" else build_service(ms)
    live: Mapping[str, Any] | None = child if kind == "Deployment" else None
    if event_type == "DELETED" or drifted(child, desired):
        logger.info("%s %s/%s %s: putting it back", kind, namespace, child["metadata"]["name"],
                    "was deleted" if event_type == "DELETED" else "drifted")
        kopf.adopt([desired], owner=body)  # type: ignore[arg-type]
        applied = kube.apply(desired)
        live = applied if kind == "Deployment" else None
    if live is not None:
        write_status(kube, ms, build_status(ms, now=now(), plan=plan, deployment=live))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                     **_: Any) -> None:
    try:
        on_child_event(memo.kube, event.get("type"), body, logger)
    except ApiException as exc:  # events are not retried by kopf: the next event (or resume) heals
        logger.warning("could not handle a Deployment event: %s", exc.reason)


@kopf.on.event("", "v1", "services", labels=MANAGED)
def service_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                  **_: Any) -> None:
    try:
        on_child_event(memo.kube, event.get("type"), body, logger)
    except ApiException as exc:
        logger.warning("could not handle a Service event: %s", exc.reason)
