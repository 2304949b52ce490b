"""reconcile() against an API that moves on while it runs: the status a user reads must end up
describing the Deployment as it is, not as it was when the operator applied it."""
from __future__ import annotations

import copy
import json
import logging
import random

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from modelservice.controller import handlers
from modelservice.controller.kube import ApiFailure, api_failure
from modelservice.api.models import parse_modelservice
from modelservice.placement.builders import NetworkPolicyDefaults
from modelservice.controller.status import recorded_plan


def deployment_status(ready: int, replicas: int = 1) -> dict:
    return {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": ready, "availableReplicas": ready}


class FakeKube:
    """The API as reconcile() sees it. The Deployment becomes ready right after it is applied,
    before the status is written: the event that says so found no plan in the status and was
    skipped, so no later event will come."""

    def __init__(self, ms: dict):
        self.ms = ms
        self.deployment: dict | None = None
        self.status_writes: list[dict] = []
        self.applied: list[dict] = []
        self.nodes: list[dict] = []
        self.service: dict | None = None
        self.policy: dict | None = None
        self.deleted: list[str] = []
        self.pods: list[dict] = []

    def apply(self, obj):
        obj = copy.deepcopy(obj)
        self.applied.append(copy.deepcopy(obj))
        if obj["kind"] == "Deployment":
            obj["metadata"]["generation"] = 1
            obj["status"] = deployment_status(ready=0)
            self.deployment = copy.deepcopy(obj)
            self.deployment["status"] = deployment_status(ready=1)  # ready a moment later
        elif obj["kind"] == "NetworkPolicy":
            obj["metadata"]["uid"] = f"np-{len(self.applied)}"
            self.policy = copy.deepcopy(obj)
        else:
            self.service = copy.deepcopy(obj)
        return obj

    def get_network_policy(self, namespace, name):
        return copy.deepcopy(self.policy)

    def delete_network_policy(self, namespace, name, uid):
        if self.policy is not None and self.policy["metadata"]["uid"] == uid:
            self.deleted.append(f"NetworkPolicy/{name}")
            self.policy = None

    def get_service(self, namespace, name):
        return copy.deepcopy(self.service)

    def list_pods(self, namespace, selector):
        return copy.deepcopy(self.pods)

    def get_deployment(self, namespace, name):
        return copy.deepcopy(self.deployment)

    def list_nodes(self):
        return copy.deepcopy(self.nodes)

    def get_modelservice(self, namespace, name):
        return copy.deepcopy(self.ms)

    def replace_status(self, namespace, name, status, resource_version=None):
        self.status_writes.append(copy.deepcopy(dict(status)))
        self.ms["status"] = copy.deepcopy(dict(status))


@pytest.fixture
def fake():
    ms = {"apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelService",
          "metadata": {"name": "emb", "namespace": "search", "generation": 1, "uid": "u-1"},
          "spec": {"task": "embed", "model": "BAAI/bge-small-en-v1.5", "accelerator": "cpu", "replicas": 1}}
    return FakeKube(ms)


def test_a_deployment_ready_before_the_first_status_write_is_reported_ready(fake):
    handlers.reconcile(fake, copy.deepcopy(fake.ms), logging.getLogger("test"))
    assert fake.status_writes[0]["ready"] == "0/1"  # what the apply answered
    assert fake.ms["status"]["phase"] == "Ready" and fake.ms["status"]["ready"] == "1/1"


def test_an_unchanged_deployment_is_not_written_twice(fake, monkeypatch):
    monkeypatch.setattr(FakeKube, "get_deployment", lambda self, ns, name: None if self.deployment is None
                        else {**self.deployment, "status": deployment_status(ready=0)})
    handlers.reconcile(fake, copy.deepcopy(fake.ms), logging.getLogger("test"))
    assert len(fake.status_writes) == 1


def test_an_invalid_spec_is_reported_in_the_status_and_not_retried(fake):
    """A spec the CRD schema lets through but the operator refuses (e.g. an older CRD)."""
    fake.ms["spec"] = {"task": "embed", "model": "m", "accelerator": "cpu", "gpu": {"count": 1}}
    with pytest.raises(kopf.PermanentError, match="InvalidSpec"):
        handlers.reconcile(fake, copy.deepcopy(fake.ms), logging.getLogger("test"))
    ready = next(c for c in fake.ms["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith("spec: Value error, accelerator cpu takes no GPUs")
    assert fake.ms["status"]["phase"] == "Failed"


H100 = {"metadata": {"name": "gpu-h100", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                                                    "nvidia.com/gpu.compute.major": "9",
                                                    "nvidia.com/gpu.compute.minor": "0"}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}}}


@pytest.mark.parametrize("spec, nodes", [
    ({"gpu": {"count": 2}}, [H100]),
    ({"gpu": {"count": 16}, "fallbackToCPU": True}, [H100]),
], ids=["gpu-auto", "fell-back-to-cpu"])
def test_a_deleted_deployment_is_put_back_as_the_reconcile_applied_it(fake, spec, nodes):
    """The child handler rebuilds the Deployment from the plan the status records, without the
    nodes the reconcile planned with."""
    fake.ms["spec"] = {"task": "embed", "model": "m", "accelerator": "auto", **spec}
    fake.nodes = nodes
    handlers.reconcile(fake, copy.deepcopy(fake.ms), logging.getLogger("test"))
    applied, recorded = fake.applied[-2], recorded_plan(parse_modelservice(fake.ms))
    assert applied["kind"] == "Deployment" and recorded is not None
    fake.nodes = []  # the child handler must not plan again
    handlers.on_child_event(fake, "DELETED", fake.deployment, logging.getLogger("test"))
    assert fake.applied[-1] == applied
    assert recorded_plan(parse_modelservice(fake.ms)) == recorded


def writes(fake):
    return len(fake.applied) + len(fake.status_writes)


def test_resync_of_a_modelservice_in_sync_writes_nothing(fake):
    handlers.reconcile(fake, copy.deepcopy(fake.ms), logging.getLogger("test"))
    before = writes(fake)
    for _ in range(3):
        assert handlers.resync(fake, "search", "emb", logging.getLogger("test"))
    assert writes(fake) == before


def test_resync_puts_back_children_deleted_without_an_event_and_reports_them(fake):
    handlers.reconcile(fake, copy.deepcopy(fake.ms), logging.getLogger("test"))
    deployment, service = fake.applied[-2], fake.applied[-1]
    fake.deployment = fake.service = None  # deleted while the watch was away: no event
    assert handlers.resync(fake, "search", "emb", logging.getLogger("test"))
    assert fake.applied[-2:] == [deployment, service]
    assert fake.ms["status"]["ready"] == "0/1"  # the new Deployment, not the lost one's 1/1
    assert fake.ms["status"]["phase"] == "Progressing"


def test_a_child_the_resync_cannot_put_back_is_reported_missing(fake):
    handlers.reconcile(fake, copy.deepcopy(fake.ms), logging.getLogger("test"))
    fake.service = None
    refused = ApiException(status=403, reason="Forbidden")

    def apply(obj):
        if obj["kind"] == "Service":
            raise refused
        return FakeKube.apply(fake, obj)
    fake.apply = apply
    with pytest.raises(ApiException):
        handlers.resync(fake, "search", "emb", logging.getLogger("test"))
    ready = next(c for c in fake.ms["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ServiceMissing")
    assert fake.ms["status"]["phase"] != "Ready"


def test_resync_forgets_a_deleted_modelservice(fake):
    fake.ms = None
    assert not handlers.resync(fake, "search", "emb", logging.getLogger("test"))


def test_the_resync_schedule_spreads_modelservices_within_the_interval(fake, monkeypatch):
    """Each ModelService is resynced within one interval of the last time, at a jittered moment."""
    seen = []
    monkeypatch.setattr(handlers, "resync", lambda kube, ns, name, logger, *_: seen.append(name) or True)
    clock = [1000.0]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock[0])
    resync = handlers.Resync(fake, 10.0, rng=random.Random(1))
    for i in range(20):
        resync.track("search", f"ms-{i}")
    first = {}
    for step in range(1, 101):  # 10 s in 0.1 s steps
        clock[0] = 1000.0 + step / 10
        resync.run_due(clock[0])
        for name in seen:
            first.setdefault(name, clock[0] - 1000.0)
        seen.clear()
    assert sorted(first) == sorted(f"ms-{i}" for i in range(20))  # all within one interval
    assert min(first.values()) >= 8.0 and len(set(first.values())) > 10  # spread, not all at once


# --- a child the API refuses: status, Event, backoff -------------------------------------------

JUNK_AFFINITY_MESSAGE = ("failed to create typed patch object (search/emb; apps/v1, Kind=Deployment): "
                         ".spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution: "
                         "expected map, got &{junk [] false}")


def refused(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="Internal Server Error" if status == 500 else "Unprocessable Entity")
    exc.body = json.dumps({"kind": "Status", "status": "Failure", "message": message,
                           "reason": "InternalError" if status == 500 else "Invalid", "code": status})
    return exc


class RefusingKube(FakeKube):
    """An API that refuses one kind of child."""

    def __init__(self, ms: dict, kind: str, exc: ApiException):
        super().__init__(ms)
        self.kind, self.exc = kind, exc

    def apply(self, obj):
        if obj["kind"] == self.kind:
            raise self.exc
        return super().apply(obj)


def test_a_refused_deployment_is_reported_with_the_apis_message_and_no_service_is_made(fake):
    kube = RefusingKube(fake.ms, "Deployment", refused(500, JUNK_AFFINITY_MESSAGE))
    with pytest.raises(handlers.ApplyFailed) as info:
        handlers.reconcile(kube, copy.deepcopy(kube.ms), logging.getLogger("test"))
    assert kube.applied == []  # no Service without its Deployment
    status = kube.ms["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    assert JUNK_AFFINITY_MESSAGE in ready["message"] and "Deployment" in ready["message"]
    assert status["phase"] == "Failed" and info.value.message == ready["message"]
    # the same failure again writes nothing
    with pytest.raises(handlers.ApplyFailed):
        handlers.reconcile(kube, copy.deepcopy(kube.ms), logging.getLogger("test"))
    assert len(kube.status_writes) == 1


def test_a_refused_service_reports_the_deployment_it_left(fake):
    kube = RefusingKube(fake.ms, "Service", refused(422, 'Service "emb" is invalid: spec.ports[0].port: Invalid value'))
    with pytest.raises(handlers.ApplyFailed, match="the API refused the Service"):
        handlers.reconcile(kube, copy.deepcopy(kube.ms), logging.getLogger("test"))
    degraded = next(c for c in kube.ms["status"]["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert "spec.ports[0].port" in degraded["message"]


def test_the_handler_posts_an_event_and_backs_off(fake, monkeypatch):
    kube = RefusingKube(fake.ms, "Deployment", refused(500, JUNK_AFFINITY_MESSAGE))
    events = []
    monkeypatch.setattr(kopf, "warn", lambda body, **kw: events.append(kw))
    delays = []
    for retry in range(8):
        with pytest.raises(kopf.TemporaryError) as info:
            handlers.reconcile_modelservice(body=copy.deepcopy(kube.ms), memo=kopf.Memo(kube=kube),
                                            logger=logging.getLogger("test"), retry=retry)
        assert "\n" not in str(info.value) and JUNK_AFFINITY_MESSAGE in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__
        delays.append(info.value.delay)
    assert delays == sorted(delays) and delays[0] < delays[3] and delays[-1] == handlers.APPLY_BACKOFF_MAX_S
    assert len(events) == 8 and events[0]["reason"] == "ApplyFailed"
    assert JUNK_AFFINITY_MESSAGE in events[0]["message"]


@pytest.mark.parametrize("body, status, expected", [
    (json.dumps({"kind": "Status", "reason": "Invalid", "message": 'Deployment.apps "x" is invalid:\n  bad'}), 422,
     ApiFailure(422, "Invalid", 'Deployment.apps "x" is invalid: bad')),
    ("<html>bad gateway</html>", 502, ApiFailure(502, "Bad Gateway", "Bad Gateway")),
    (None, 0, ApiFailure(0, "Bad Gateway", "Bad Gateway")),
    (json.dumps({"message": "x" * 5000}), 422, ApiFailure(422, "Bad Gateway", "x" * 1021 + "...")),
])
def test_api_failure_is_the_apis_status_on_one_line(body, status, expected):
    exc = ApiException(status=status, reason="Bad Gateway")
    exc.body = body
    assert api_failure(exc) == expected


def test_a_modelservice_named_before_the_crd_checked_names_gets_one_event_and_no_retry(fake, monkeypatch):
    """Such an object refuses every write (the root CEL rule): the status cannot say it."""
    fake.ms["metadata"]["name"] = "bge.small"
    message = 'ModelService "bge.small" is invalid: metadata: Invalid value: metadata.name must be a DNS-1035 label'

    def refuse_status(namespace, name, status):
        raise refused(422, message)
    monkeypatch.setattr(fake, "replace_status", refuse_status)
    events = []
    monkeypatch.setattr(kopf, "warn", lambda body, **kw: events.append(kw))
    with pytest.raises(kopf.PermanentError) as info:
        handlers.reconcile_modelservice(body=copy.deepcopy(fake.ms), memo=kopf.Memo(kube=fake),
                                        logger=logging.getLogger("test"), retry=0)
    assert message in str(info.value) and fake.applied == []
    assert [e["reason"] for e in events] == ["ApplyFailed"] and message in events[0]["message"]


# --- the NetworkPolicy child ------------------------------------------------------------------------

ON = NetworkPolicyDefaults(enabled=True, peers=({"podSelector": {"matchLabels": {"app": "gateway"}}},))


def test_the_operators_default_gives_a_modelservice_its_network_policy_and_repairs_it(fake):
    log = logging.getLogger("test")
    handlers.reconcile(fake, copy.deepcopy(fake.ms), log, ON)
    applied = fake.policy
    assert applied is not None and applied["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert applied["spec"]["ingress"][0]["from"] == [{"podSelector": {}}, *ON.peers]
    fake.policy = None  # deleted: its event puts it back
    handlers.on_child_event(fake, "DELETED", applied, log, ON)
    assert fake.policy["spec"] == applied["spec"]
    fake.policy = None  # deleted unseen: the resync puts it back
    assert handlers.resync(fake, "search", "emb", log, ON)
    assert fake.policy["spec"] == applied["spec"]
    before = writes(fake)
    assert handlers.resync(fake, "search", "emb", log, ON)
    assert writes(fake) == before, "in sync: no write"
    fake.policy["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})  # widened by hand
    handlers.on_child_event(fake, "MODIFIED", fake.policy, log, ON)
    assert fake.policy["spec"] == applied["spec"]


def test_a_modelservice_without_a_policy_gets_none_and_loses_the_one_it_had(fake):
    log = logging.getLogger("test")
    handlers.reconcile(fake, copy.deepcopy(fake.ms), log)
    assert fake.policy is None and not any(o["kind"] == "NetworkPolicy" for o in fake.applied)
    handlers.reconcile(fake, copy.deepcopy(fake.ms), log, ON)
    assert fake.policy is not None
    fake.ms["spec"]["networkPolicy"] = {"enabled": False}  # the user opts out
    handlers.reconcile(fake, copy.deepcopy(fake.ms), log, ON)
    assert fake.policy is None and fake.deleted == ["NetworkPolicy/emb"]


def test_the_resync_deletes_a_policy_turned_off_but_never_one_it_does_not_own(fake):
    log = logging.getLogger("test")
    handlers.reconcile(fake, copy.deepcopy(fake.ms), log, ON)
    assert handlers.resync(fake, "search", "emb", log)  # the operator's default is now off
    assert fake.policy is None and fake.deleted == ["NetworkPolicy/emb"]
    someone_elses = {"kind": "NetworkPolicy", "metadata": {"name": "emb", "namespace": "search", "uid": "x"},
                     "spec": {"podSelector": {}}}
    fake.policy = copy.deepcopy(someone_elses)
    assert handlers.resync(fake, "search", "emb", log)
    assert fake.policy == someone_elses
