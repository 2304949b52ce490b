"""The ModelService status a user reads with kubectl get msvc -o yaml, and drift detection."""
from __future__ import annotations

import pytest

from modelservice.api.models import parse_modelservice
from modelservice.placement.plan import Plan, PlanError
from modelservice.placement.builders import contains
from modelservice.controller.status import (build_invalid_status, build_status, recorded_plan, status_changed,
                                 unschedulable_message)
from modelservice.__main__ import parse_args

PLAN = Plan("tei", "hopper", "ghcr.io/huggingface/text-embeddings-inference:hopper-1.9", 1,
            {"nvidia.com/gpu.compute.major": "9", "nvidia.com/gpu.compute.minor": "0"})
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def body(replicas=2, generation=3, status=None, **spec):
    ms = {"metadata": {"name": "emb", "namespace": "search", "generation": generation},
          "spec": {"task": "embed", "model": "m", "replicas": replicas, **spec}}
    if status is not None:
        ms["status"] = status
    return ms


def ms(replicas=2, generation=3, status=None, **spec):
    return parse_modelservice(body(replicas, generation, status, **spec))


def deployment(ready, updated=None, replicas=None, generation=1, observed=1, conditions=()):
    return {"metadata": {"generation": generation},
            "status": {"observedGeneration": observed, "replicas": replicas if replicas is not None else ready,
                       "updatedReplicas": updated if updated is not None else ready,
                       "readyReplicas": ready, "conditions": list(conditions)}}


def conditions(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_rolled_out_is_ready_with_endpoint_variant_and_selector():
    status = build_status(ms(), now=T0, plan=PLAN, deployment=deployment(2))
    assert conditions(status) == {"Ready": ("True", "AllReplicasReady"),
                                  "Progressing": ("False", "RolloutComplete"),
                                  "Degraded": ("False", "AsExpected")}
    assert status["phase"] == "Ready" and status["ready"] == "2/2"
    assert status["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    assert status["endpoint"] == "http://emb.search.svc.cluster.local:8080"
    assert status["selector"] == "serving.embedding-images.io/modelservice=emb"
    assert (status["variant"], status["image"], status["engine"]) == ("hopper", PLAN.image, "tei")


def test_rolling_out_is_progressing_not_ready():
    status = build_status(ms(), now=T0, plan=PLAN, deployment=deployment(1, updated=1, replicas=2))
    assert conditions(status)["Ready"] == ("False", "ReplicasNotReady")
    assert conditions(status)["Progressing"] == ("True", "RolloutInProgress")
    assert status["phase"] == "Progressing" and status["ready"] == "1/2"


def test_stuck_rollout_is_degraded():
    stuck = deployment(0, replicas=1, conditions=[{"type": "Progressing", "status": "False",
                                                   "reason": "ProgressDeadlineExceeded",
                                                   "message": "ReplicaSet has timed out progressing."}])
    status = build_status(ms(), now=T0, plan=PLAN, deployment=stuck)
    assert conditions(status)["Degraded"] == ("True", "ProgressDeadlineExceeded")
    assert status["phase"] == "Degraded"


def test_refused_spec_reports_the_reason_and_keeps_what_runs():
    error = PlanError("UnsupportedModelForEngine", "use engine reranker")
    old = build_status(ms(), now=T0, plan=PLAN, deployment=deployment(2))
    status = build_status(ms(status=old, generation=4), now=T1, error=error, deployment=deployment(2))
    assert conditions(status)["Ready"] == ("False", "UnsupportedModelForEngine")
    assert conditions(status)["Degraded"] == ("True", "UnsupportedModelForEngine")
    assert status["phase"] == "Failed" and status["variant"] == "hopper"
    assert "use engine reranker" in status["conditions"][0]["message"]
    # the child handler must not re-apply the old plan over the refused generation
    assert recorded_plan(ms(status=status, generation=4)) is None


def test_no_gpu_node_is_pending():
    error = PlanError("NoMatchingGPUNodes", "no nodes", retry=True)
    status = build_status(ms(), now=T0, error=error)
    assert status["phase"] == "Pending" and conditions(status)["Ready"] == ("False", "NoMatchingGPUNodes")
    assert conditions(status)["Degraded"] == ("False", "AsExpected")


INSUFFICIENT = ("0/6 nodes are available: 1 Insufficient nvidia.com/gpu, 5 node(s) didn't match Pod's node "
                "affinity/selector. preemption: 0/6 nodes are available: 1 No preemption victims found.")


def pod(name, node=None, scheduled=None):
    conditions = [] if scheduled is None else [scheduled]
    return {"metadata": {"name": name}, "spec": {"nodeName": node} if node else {},
            "status": {"phase": "Running" if node else "Pending", "conditions": conditions}}


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": INSUFFICIENT}


def test_pods_the_scheduler_cannot_place_are_reported_with_its_message():
    pending = [pod("emb-b", scheduled=UNSCHEDULABLE), pod("emb-a", scheduled=UNSCHEDULABLE)]
    status = build_status(ms(), now=T0, plan=PLAN, deployment=deployment(0, replicas=2), pods=pending)
    assert conditions(status)["Ready"] == ("False", "Unschedulable")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == f"0/2 pods ready; pods are Pending: {INSUFFICIENT}"
    assert status["phase"] == "Pending" and status["ready"] == "0/2"
    # one pod placed and ready, the other waiting: still said, but the model serves
    mixed = [pod("emb-a", node="gpu-h100", scheduled={"type": "PodScheduled", "status": "True"}),
             pod("emb-b", scheduled=UNSCHEDULABLE)]
    status = build_status(ms(), now=T0, plan=PLAN, deployment=deployment(1, updated=2, replicas=2), pods=mixed)
    assert conditions(status)["Ready"] == ("False", "Unschedulable") and status["phase"] == "Progressing"
    # the plan stays recorded, so the child handlers keep repairing children meanwhile
    assert recorded_plan(ms(status=status)) == PLAN


@pytest.mark.parametrize("pods", [
    [],
    [pod("emb-a")],  # not looked at by the scheduler yet
    [pod("emb-a", node="gpu-h100", scheduled={"type": "PodScheduled", "status": "True"})],
    [pod("emb-a", scheduled={**UNSCHEDULABLE, "reason": "SchedulingGated"})],
], ids=["no-pods", "not-yet-scheduled", "scheduled", "gated"])
def test_pods_still_coming_up_are_not_called_unschedulable(pods):
    assert unschedulable_message(pods) is None
    status = build_status(ms(), now=T0, plan=PLAN, deployment=deployment(0, replicas=2), pods=pods)
    assert conditions(status)["Ready"] == ("False", "ReplicasNotReady")


def test_missing_children_are_never_ready():
    """A status must describe the children that exist: the last Deployment's 2/2 is gone with it."""
    no_deployment = build_status(ms(), now=T0, plan=PLAN, deployment=None)
    assert conditions(no_deployment)["Ready"] == ("False", "DeploymentMissing")
    assert no_deployment["ready"] == "0/2" and no_deployment["phase"] != "Ready"
    no_service = build_status(ms(), now=T0, plan=PLAN, deployment=deployment(2), service_exists=False)
    assert conditions(no_service)["Ready"] == ("False", "ServiceMissing")
    assert no_service["phase"] != "Ready"
    assert recorded_plan(ms(status=no_service)) == PLAN


def test_cpu_fallback_is_ready_but_degraded():
    plan = Plan("tei", "cpu", "tei:cpu-1.9", 0, {}, fell_back_to_cpu=True)
    status = build_status(ms(replicas=1), now=T0, plan=plan, deployment=deployment(1))
    assert conditions(status)["Ready"] == ("True", "AllReplicasReady")
    assert conditions(status)["Degraded"] == ("True", "FellBackToCPU")


def test_same_inputs_same_status_so_nothing_is_written_again():
    first = build_status(ms(), now=T0, plan=PLAN, deployment=deployment(2))
    again = build_status(ms(status=first), now=T1, plan=PLAN, deployment=deployment(2))
    assert not status_changed(first, again)
    # a transition moves lastTransitionTime only for the condition that changed
    later = build_status(ms(status=first), now=T1, plan=PLAN, deployment=deployment(1, replicas=2))
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times == {"Ready": T1, "Progressing": T1, "Degraded": T0}
    assert status_changed(first, later)


@pytest.mark.parametrize("plan", [
    PLAN,
    Plan("tei", "ampere-80", "tei:1.9", 4, {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
    Plan("reranker", "cpu", "reranker:cpu", 0, {}, fell_back_to_cpu=True),
    Plan("reranker", "cpu", "reranker:cpu", 0, {}),
], ids=["gpu", "four-gpus", "fell-back", "cpu"])
def test_plan_round_trips_through_the_status(plan):
    """The child handlers repair children from the recorded plan: it must be the plan itself, for
    a spec that does not say it (gpu.count 0, accelerator auto) as well."""
    status = build_status(ms(), now=T0, plan=plan, deployment=deployment(2))
    assert recorded_plan(ms(status=status)) == plan
    assert recorded_plan(ms(status=status, generation=4)) is None  # status is for an older spec
    older = {k: v for k, v in status.items() if k != "gpuCount"}  # written before gpuCount existed
    assert recorded_plan(ms(status=older)) is None


def test_invalid_spec_is_reported_and_keeps_what_runs():
    old = build_status(ms(), now=T0, plan=PLAN, deployment=deployment(2))
    invalid = body(status=old, generation=4, accelerator="cpu", gpu={"count": 1})
    error = PlanError("InvalidSpec", "spec: accelerator cpu takes no GPUs")
    running = {**deployment(2), "spec": {"replicas": 2}}
    status = build_invalid_status(invalid, now=T1, error=error, deployment=running)
    assert conditions(status)["Ready"] == ("False", "InvalidSpec")
    assert status["phase"] == "Failed" and status["observedGeneration"] == 4
    assert (status["variant"], status["ready"], status["endpoint"]) == ("hopper", "2/2", old["endpoint"])


def test_drift_detection_ignores_api_defaults_but_sees_edits():
    desired = {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "tei", "image": "a", "resources": {"limits": {"nvidia.com/gpu": 1}}}], "volumes": [
        {"name": "tmp", "emptyDir": {}}]}}}
    live = {"replicas": 1, "revisionHistoryLimit": 10, "template": {"spec": {"containers": [
        {"name": "tei", "image": "a", "imagePullPolicy": "IfNotPresent",
         "resources": {"limits": {"nvidia.com/gpu": "1"}}}], "dnsPolicy": "ClusterFirst",
        "volumes": [{"name": "tmp", "emptyDir": {}}]}}}
    assert contains(live, desired)
    live["template"]["spec"]["containers"][0]["image"] = "b"
    assert not contains(live, desired)
    live["template"]["spec"]["containers"][0]["image"] = "a"
    live["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert not contains(live, desired)


def test_command_line(monkeypatch):
    monkeypatch.delenv("MODELSERVICE_RESYNC_SECONDS", raising=False)
    assert parse_args([]).namespace == [] and parse_args(["-A"]).all_namespaces
    assert parse_args([]).resync_seconds == 60 and parse_args(["--resync-seconds=5"]).resync_seconds == 5
    monkeypatch.setenv("MODELSERVICE_RESYNC_SECONDS", "7.5")
    assert parse_args([]).resync_seconds == 7.5
    args = parse_args(["--standalone", "--namespace=a", "--namespace=b", "--liveness=http://0.0.0.0:8080/healthz"])
    assert args.namespace == ["a", "b"] and args.liveness.endswith("/healthz")
