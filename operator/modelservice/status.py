"""The ModelService status, built purely from the plan (or why there is none) and the Deployment.

Conditions follow Kubernetes conventions: type, status, reason, message, observedGeneration and a
lastTransitionTime that only moves when the condition's status does. `build_status` takes the
clock as an argument, and returns the same dict for the same inputs, so the handlers can write
the status only when it changed.

Condition reasons:
  Ready        AllReplicasReady | ReplicasNotReady | ScaledToZero | <PlanError reason>
               (UnsupportedModelForEngine, UnsupportedEngineArgs, NoMatchingGPUNodes,
               UnknownGPUProduct, GPUProductNotInAccelerator, InvalidSpec, NamespaceRefused)
  Progressing  RolloutInProgress | RolloutComplete | ProgressDeadlineExceeded | <PlanError reason>
  Degraded     AsExpected | FellBackToCPU | ReplicaFailure | ProgressDeadlineExceeded |
               <PlanError reason> (when an earlier Deployment still runs)
"""
from __future__ import annotations

from typing import Any, Mapping

from .plan import Plan, PlanError
from .resources import build_endpoint, build_selector

CONDITION_TYPES = ("Ready", "Progressing", "Degraded")


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int | None,
               old: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    cond = {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since or now}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def _deployment_condition(deployment: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any]:
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return {}


def build_status(
    body: Mapping[str, Any],
    *,
    now: str,
    plan: Plan | None = None,
    error: PlanError | None = None,
    deployment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status for a ModelService body: from `plan` and the live `deployment`, or from `error`
    (the spec cannot run; an earlier Deployment, if any, keeps running and is reported)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    old = dict(body.get("status") or {})
    old_conditions = {c.get("type"): c for c in old.get("conditions") or []}
    generation = meta.get("generation")
    desired = int(spec.get("replicas", 1))

    dep_status = (deployment or {}).get("status") or {}
    current = int(dep_status.get("replicas") or 0)
    ready = int(dep_status.get("readyReplicas") or 0)

    status: dict[str, Any] = {}
    if generation is not None:
        status["observedGeneration"] = generation
    conditions: list[dict[str, Any]]

    def cond(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return _condition(type_, ok, reason, message, generation, old_conditions.get(type_), now)

    if error is not None:
        running = deployment is not None
        conditions = [
            cond("Ready", False, error.reason, error.message),
            cond("Progressing", False, error.reason, error.message),
            cond("Degraded", running, error.reason if running else "AsExpected",
                 f"the previous Deployment keeps running: {error.message}" if running else ""),
        ]
        status["phase"] = "Pending" if error.retry else "Failed"
        # What runs is still what the last good plan chose.
        for key in ("engine", "variant", "image", "nodeSelector"):
            if key in old:
                status[key] = old[key]
    else:
        assert plan is not None
        dep_meta = (deployment or {}).get("metadata") or {}
        observed = int(dep_status.get("observedGeneration") or 0) >= int(dep_meta.get("generation") or 1)
        updated = int(dep_status.get("updatedReplicas") or 0)
        rolled_out = (deployment is not None and observed and updated == desired
                      and current == desired and ready == desired)
        progress = _deployment_condition(deployment, "Progressing")
        deadline = progress.get("reason") == "ProgressDeadlineExceeded"
        failure = _deployment_condition(deployment, "ReplicaFailure")

        if desired == 0:
            ready_cond = cond("Ready", False, "ScaledToZero", "replicas is 0")
        elif rolled_out:
            ready_cond = cond("Ready", True, "AllReplicasReady", f"{ready}/{desired} pods ready")
        else:
            ready_cond = cond("Ready", False, "ReplicasNotReady", f"{ready}/{desired} pods ready")
        if deadline:
            progressing = cond("Progressing", False, "ProgressDeadlineExceeded", progress.get("message", ""))
        elif rolled_out:
            progressing = cond("Progressing", False, "RolloutComplete", f"{plan.variant} pods rolled out")
        else:
            progressing = cond("Progressing", True, "RolloutInProgress",
                               f"{updated}/{desired} pods updated, {ready} ready")
        if deadline:
            degraded = cond("Degraded", True, "ProgressDeadlineExceeded", progress.get("message", ""))
        elif failure.get("status") == "True":
            degraded = cond("Degraded", True, "ReplicaFailure", failure.get("message", ""))
        elif plan.fell_back_to_cpu:
            degraded = cond("Degraded", True, "FellBackToCPU",
                            "no GPU node can hold the replicas; running the CPU image (fallbackToCPU)")
        else:
            degraded = cond("Degraded", False, "AsExpected", "")
        conditions = [ready_cond, progressing, degraded]
        if degraded["status"] == "True":
            status["phase"] = "Degraded"
        elif ready_cond["status"] == "True":
            status["phase"] = "Ready"
        else:
            status["phase"] = "Progressing" if desired else "Pending"
        status["engine"] = plan.engine
        status["variant"] = plan.variant
        status["image"] = plan.image
        if plan.node_selector:
            status["nodeSelector"] = dict(plan.node_selector)

    status["conditions"] = conditions
    status["replicas"] = current
    status["readyReplicas"] = ready
    status["ready"] = f"{ready}/{desired}"
    status["endpoint"] = build_endpoint(body)
    status["selector"] = build_selector(meta["name"])
    return status


def status_changed(body: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether writing `status` would change what the API holds."""
    return dict(body.get("status") or {}) != dict(status)


def plan_from_status(body: Mapping[str, Any]) -> Plan | None:
    """The plan the last reconcile chose, as recorded in the status (None if there is none, or
    if the status does not describe the current generation)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    if not status.get("variant") or status.get("observedGeneration") != meta.get("generation"):
        return None
    if status.get("phase") in ("Failed", "Pending") and status.get("conditions") and any(
            c.get("type") == "Ready" and c.get("reason") not in ("ReplicasNotReady", "ScaledToZero",
                                                                 "AllReplicasReady")
            for c in status["conditions"]):
        return None
    spec = body.get("spec") or {}
    gpu = spec.get("gpu") or {}
    gpu_variant = status["variant"] != "cpu"
    return Plan(
        engine=status["engine"],
        variant=status["variant"],
        image=status["image"],
        gpu_count=(gpu.get("count") or 1) if gpu_variant else 0,
        node_selector=dict(status.get("nodeSelector") or {}),
        fell_back_to_cpu=not gpu_variant and spec.get("accelerator", "auto") == "auto",
    )
