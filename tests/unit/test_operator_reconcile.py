"""reconcile() against an API that moves on while it runs: the status a user reads must end up
describing the Deployment as it is, not as it was when the operator applied it."""
from __future__ import annotations

import copy
import logging

import pytest

from modelservice import handlers


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

    def apply(self, obj):
        obj = copy.deepcopy(obj)
        if obj["kind"] == "Deployment":
            obj["metadata"]["generation"] = 1
            obj["status"] = deployment_status(ready=0)
            self.deployment = copy.deepcopy(obj)
            self.deployment["status"] = deployment_status(ready=1)  # ready a moment later
        return obj

    def get_deployment(self, namespace, name):
        return copy.deepcopy(self.deployment)

    def list_nodes(self):
        return []

    def replace_status(self, namespace, name, status):
        self.status_writes.append(copy.deepcopy(dict(status)))
        self.ms["status"] = copy.deepcopy(dict(status))


@pytest.fixture
def fake(monkeypatch):
    ms = {"apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelService",
          "metadata": {"name": "emb", "namespace": "search", "generation": 1, "uid": "u-1"},
          "spec": {"task": "embed", "model": "BAAI/bge-small-en-v1.5", "accelerator": "cpu", "replicas": 1}}
    kube = FakeKube(ms)
    monkeypatch.setattr(handlers, "_kube", kube)
    return kube


def test_a_deployment_ready_before_the_first_status_write_is_reported_ready(fake):
    handlers.reconcile(copy.deepcopy(fake.ms), logging.getLogger("test"))
    assert fake.status_writes[0]["ready"] == "0/1"  # what the apply answered
    assert fake.ms["status"]["phase"] == "Ready" and fake.ms["status"]["ready"] == "1/1"


def test_an_unchanged_deployment_is_not_written_twice(fake, monkeypatch):
    monkeypatch.setattr(FakeKube, "get_deployment", lambda self, ns, name: None if self.deployment is None
                        else {**self.deployment, "status": deployment_status(ready=0)})
    handlers.reconcile(copy.deepcopy(fake.ms), logging.getLogger("test"))
    assert len(fake.status_writes) == 1
