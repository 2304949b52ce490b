"""The ModelService status, built purely from the plan (or why there is none) and the Deployment.

The status records the whole plan (engine, variant, image, gpuCount, nodeSelector,
fellBackToCPU): the child handlers read it back with `recorded_plan()` to repair a child without
planning again, so nothing is derived back from the variant's name.

Conditions follow Kubernetes conventions: type, status, reason, message, observedGeneration and a
lastTransitionTime that only moves when the condition's status does. `build_status` takes the
clock as an argument, and returns the same dict for the same inputs, so the handlers can write
the status only when it changed.

The children are reported as they are, not as the last apply left them: a missing Deployment
or Service is never Ready, and pods the scheduler cannot place are named with its message (a
rollout waiting for GPUs that do not exist would otherwise look like one still in progress).

Condition reasons:
  Ready        AllReplicasReady | ReplicasNotReady | Unschedulable | DeploymentMissing |
               ServiceMissing | ScaledToZero | <PlanError reason>
               (UnsupportedModelForEngine, UnsupportedEngineArgs, NoMatchingGPUNodes,
               UnknownGPUProduct, GPUProductNotInAccelerator, InvalidSpec, NamespaceRefused,
               ModelCacheNotFound, ModelCacheNotReady, ModelCacheModelMismatch, GPUMemoryUnknown,
               GPUSharingOff)
  Progressing  RolloutInProgress | RolloutComplete | ProgressDeadlineExceeded | <PlanError reason>
  Degraded     AsExpected | FellBackToCPU | ReplicaFailure | ProgressDeadlineExceeded |
               <PlanError reason> (when an earlier Deployment still runs)
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..api.models import ModelService, build_condition
from ..cache.builders import CacheMount
from ..placement.builders import build_endpoint, build_selector
from ..placement.plan import Plan, PlanError
from ..placement.sharing import GpuShare

# Ready reasons of a status built from a plan; any other reason is a PlanError's, and such a
# status only carries over what an earlier plan runs.
PLANNED_REASONS = ("AllReplicasReady", "ReplicasNotReady", "Unschedulable", "DeploymentMissing",
                   "ServiceMissing", "ScaledToZero")
# The status fields that record a plan; a status built from a PlanError carries them over.
PLAN_FIELDS = ("engine", "variant", "image", "gpuCount", "nodeSelector", "fellBackToCPU", "modelCache",
               "gpuShare")


def _deployment_condition(deployment: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any]:
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return {}


def unschedulable_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the scheduler cannot place these pods, in its own words (the PodScheduled=False
    condition's message of the first such pod by name), or None when none of them is waiting
    for a node."""
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        if (pod.get("spec") or {}).get("nodeName"):
            continue
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                    and cond.get("reason") == "Unschedulable"):
                return cond.get("message") or "the scheduler found no node for the pod"
    return None


def build_status(
    ms: ModelService,
    *,
    now: str,
    plan: Plan | None = None,
    error: PlanError | None = None,
    deployment: Mapping[str, Any] | None = None,
    service_exists: bool = True,
    pods: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The status of a ModelService: from `plan` and the live `deployment` (None: it does not
    exist), whether its Service exists (callers that have not just applied or read it say so) and
    its pods (only read for the scheduler's word on Pending ones; callers pass none when every
    replica is ready); or from `error` (the spec cannot run; an earlier Deployment, if any, keeps
    running and is reported)."""
    status = _build_status(ms.name, ms.generation, ms.status, desired=ms.spec.replicas,
                           endpoint=build_endpoint(ms), now=now, plan=plan, error=error,
                           deployment=deployment, service_exists=service_exists, pods=pods)
    # status.autoscaling is the autoscaler's (autoscaling/loop.py writes it alone); kept while enabled.
    if ms.spec.autoscaling is not None and ms.spec.autoscaling.enabled and "autoscaling" in ms.status:
        status["autoscaling"] = ms.status["autoscaling"]
    return status


def build_invalid_status(body: Mapping[str, Any], *, now: str, error: PlanError,
                         deployment: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The status of a ModelService whose spec is not read (`error`: InvalidSpec, or
    NamespaceRefused): there is no spec to go by, so the desired replicas are the running Deployment's and the endpoint is the
    one the last good spec published."""
    meta = body.get("metadata") or {}
    old = body.get("status") or {}
    desired = int(((deployment or {}).get("spec") or {}).get("replicas") or 0)
    status = _build_status(meta["name"], meta.get("generation"), old, desired=desired,
                           endpoint=old.get("endpoint"), now=now, error=error, deployment=deployment)
    if "autoscaling" in old:   # no spec to judge by: the autoscaler's last account stays
        status["autoscaling"] = old["autoscaling"]
    return status


def _plan_fields(plan: Plan) -> dict[str, Any]:
    """The status fields that record a plan (read back by `recorded_plan`)."""
    fields: dict[str, Any] = {"engine": plan.engine, "variant": plan.variant, "image": plan.image,
                              "gpuCount": plan.gpu_count}
    if plan.node_selector:
        fields["nodeSelector"] = dict(plan.node_selector)
    if plan.fell_back_to_cpu:
        fields["fellBackToCPU"] = True
    if plan.cache is not None:
        fields["modelCache"] = plan.cache.as_status()
    if plan.share is not None:
        fields["gpuShare"] = plan.share.as_status()
    return fields


def _build_status(
    name: str,
    generation: int | None,
    old: Mapping[str, Any],
    *,
    desired: int,
    endpoint: str | None,
    now: str,
    plan: Plan | None = None,
    error: PlanError | None = None,
    deployment: Mapping[str, Any] | None = None,
    service_exists: bool = True,
    pods: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    old_conditions = {c.get("type"): c for c in old.get("conditions") or []}

    dep_status = (deployment or {}).get("status") or {}
    current = int(dep_status.get("replicas") or 0)
    ready = int(dep_status.get("readyReplicas") or 0)

    status: dict[str, Any] = {}
    if generation is not None:
        status["observedGeneration"] = generation
    conditions: list[dict[str, Any]]

    def cond(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return build_condition(type_, ok, reason, message, generation, old_conditions.get(type_), now)

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
        for key in PLAN_FIELDS:
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

        unschedulable = None if rolled_out else unschedulable_message(pods)
        if deployment is None:
            ready_cond = cond("Ready", False, "DeploymentMissing",
                              f"the Deployment {name} does not exist; the operator recreates it")
        elif not service_exists:
            ready_cond = cond("Ready", False, "ServiceMissing",
                              f"the Service {name} does not exist; the operator recreates it")
        elif desired == 0:
            ready_cond = cond("Ready", False, "ScaledToZero", "replicas is 0")
        elif rolled_out:
            ready_cond = cond("Ready", True, "AllReplicasReady", f"{ready}/{desired} pods ready")
        elif unschedulable is not None:
            ready_cond = cond("Ready", False, "Unschedulable",
                              f"{ready}/{desired} pods ready; pods are Pending: {unschedulable}")
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
        elif unschedulable is not None and ready == 0:
            status["phase"] = "Pending"
        else:
            status["phase"] = "Progressing" if desired else "Pending"
        status.update(_plan_fields(plan))

    status["conditions"] = conditions
    status["replicas"] = current
    status["readyReplicas"] = ready
    status["ready"] = f"{ready}/{desired}"
    if endpoint is not None:
        status["endpoint"] = endpoint
    status["selector"] = build_selector(name)
    return status


def status_changed(old: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether writing `status` over `old` (the status as the API holds it) would change it."""
    return dict(old) != dict(status)


def recorded_plan(ms: ModelService) -> Plan | None:
    """The plan the last reconcile chose, as the status records it; None when the status does not
    describe the current generation, describes a spec that cannot run, or was written by an
    operator that recorded less (the next reconcile, at the latest on resume, records it)."""
    status = ms.status
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    if (status.get("observedGeneration") != ms.generation or ready.get("reason") not in PLANNED_REASONS
            or "gpuCount" not in status):
        return None
    return Plan(
        engine=status["engine"],
        variant=status["variant"],
        image=status["image"],
        gpu_count=status["gpuCount"],
        node_selector=dict(status.get("nodeSelector") or {}),
        fell_back_to_cpu=bool(status.get("fellBackToCPU")),
        cache=CacheMount.from_status(status.get("modelCache")),
        share=GpuShare.from_status(status.get("gpuShare")),
    )
