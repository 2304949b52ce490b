"""Thin kopf handlers around one reconcile().

* A ModelService is created, changed, or seen again after a restart: `reconcile()` plans
  (resources.py, plan.py: pure), applies the Deployment and Service (kube.py: server-side apply,
  owner references from kopf.adopt) and writes the status (status.py) only when it changed.
* A child Deployment or Service changes or disappears: `on_child_event()` puts back a deleted or
  hand-edited child and refreshes the status from the Deployment's; it never re-plans, it reuses
  the plan the status records for the current generation.

Specs that cannot run raise kopf.PermanentError (retried only when the spec changes); a missing
GPU node raises kopf.TemporaryError (retried, nodes may join). API failures are retried by kopf.
"""
from __future__ import annotations

import datetime
import logging
from typing import Any, Mapping

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from . import kube as kube_module
from .models import GROUP, PLURAL, VERSION, parse_spec
from .plan import Plan, PlanError, build_plan
from .resources import MANAGER, build_deployment, build_service
from .scope import SYSTEM_NAMESPACES, namespace_refusal
from .status import build_status, plan_from_status, status_changed

MANAGED = {"app.kubernetes.io/managed-by": MANAGER}
RETRY_NODES_S = 30
_kube: kube_module.Kube | None = None


def kube() -> kube_module.Kube:
    global _kube
    if _kube is None:
        kube_module.load_config()
        _kube = kube_module.Kube()
    return _kube


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress in annotations only: the status belongs to the ModelService schema, which has no
    # room (and no preserve-unknown-fields) for kopf's own bookkeeping.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="serving.embedding-images.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="serving.embedding-images.io", key="last-handled-configuration")
    # Events only for problems: a healthy reconcile writes nothing but the objects and status.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 300
    kube()


def write_status(body: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Writes the status when it differs from the body's; returns whether it wrote."""
    if not status_changed(body, status):
        return False
    meta = body["metadata"]
    kube().replace_status(meta["namespace"], meta["name"], status)
    return True


def apply_children(body: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    """Applies the Deployment and Service of a plan; returns the live Deployment."""
    deployment = build_deployment(body, plan)
    service = build_service(body)
    kopf.adopt([deployment, service], owner=body)  # type: ignore[arg-type]
    live = kube().apply(deployment)
    kube().apply(service)
    return live


def reconcile(body: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Makes the children and the status match the ModelService."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
    except ValidationError as exc:
        error = PlanError("InvalidSpec", "; ".join(
            f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()))
        write_status(body, build_status(body, now=now(), error=error,
                                        deployment=kube().get_deployment(namespace, name)))
        raise kopf.PermanentError(error.message) from exc
    nodes = kube().list_nodes() if spec.accelerator == "auto" else None
    previous = (body.get("status") or {}).get("nodeSelector")
    try:
        plan = build_plan(spec, nodes, previous=previous)
    except PlanError as error:
        write_status(body, build_status(body, now=now(), error=error,
                                        deployment=kube().get_deployment(namespace, name)))
        if error.retry:
            raise kopf.TemporaryError(error.message, delay=RETRY_NODES_S) from error
        raise kopf.PermanentError(f"{error.reason}: {error.message}") from error
    live = apply_children(body, plan)
    status = build_status(body, now=now(), plan=plan, deployment=live)
    if write_status(body, status):
        logger.info("%s/%s: %s on %s (%s)", namespace, name, plan.engine, plan.variant, plan.image)
    # Deployment events that arrived between the apply and the status write were skipped (the
    # status held no plan for this generation yet), and a Deployment that became ready meanwhile
    # sends no more: read it once more, now that later events find the plan in the status.
    fresh = kube().get_deployment(namespace, name)
    if fresh is not None and fresh.get("status") != live.get("status"):
        written = {**body, "status": status}
        write_status(written, build_status(written, now=now(), plan=plan, deployment=fresh))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_modelservice(body: kopf.Body, logger: logging.Logger, memo: kopf.Memo, **_: Any) -> None:
    refusal = namespace_refusal(body["metadata"]["namespace"],
                                memo.get("refused_namespaces", SYSTEM_NAMESPACES))
    if refusal is not None:  # nothing is read or applied in a refused namespace
        write_status(body, build_status(body, now=now(), error=refusal))
        kopf.warn(body, reason=refusal.reason, message=refusal.message)
        logger.warning("%s: %s", refusal.reason, refusal.message)
        return
    reconcile(body, logger)


def _owner_name(child: Mapping[str, Any]) -> str | None:
    for ref in child.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "ModelService" and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return ref.get("name")
    return None


def on_child_event(event_type: str | None, child: Mapping[str, Any],
                   logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Repairs a deleted or drifted child and refreshes the status from the Deployment."""
    owner = _owner_name(child)
    namespace = child.get("metadata", {}).get("namespace")
    if owner is None or namespace is None:
        return
    ms = kube().get_modelservice(namespace, owner)
    if ms is None or ms["metadata"].get("deletionTimestamp"):
        return
    plan = plan_from_status(ms)
    if plan is None:
        return  # the ModelService handler has not finished this generation: it owns the next step
    kind = child.get("kind")
    desired = build_deployment(ms, plan) if kind == "Deployment" else build_service(ms)
    drifted = event_type == "DELETED" or not (
        kube_module.contains(child.get("spec"), desired["spec"])
        and kube_module.contains(child.get("metadata", {}).get("labels") or {}, desired["metadata"]["labels"]))
    live: Mapping[str, Any] | None = child if kind == "Deployment" else None
    if drifted:
        logger.info("%s %s/%s %s: putting it back", kind, namespace, child["metadata"]["name"],
                    "was deleted" if event_type == "DELETED" else "drifted")
        kopf.adopt([desired], owner=ms)  # type: ignore[arg-type]
        applied = kube().apply(desired)
        live = applied if kind == "Deployment" else None
    if live is not None:
        write_status(ms, build_status(ms, now=now(), plan=plan, deployment=live))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_event(event: Mapping[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    try:
        on_child_event(event.get("type"), body, logger)
    except ApiException as exc:  # events are not retried by kopf: the next event (or resume) heals
        logger.warning("could not handle a Deployment event: %s", exc.reason)


@kopf.on.event("", "v1", "services", labels=MANAGED)
def service_event(event: Mapping[str, Any], body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    try:
        on_child_event(event.get("type"), body, logger)
    except ApiException as exc:
        logger.warning("could not handle a Service event: %s", exc.reason)
