"""The operator refuses ModelServices in the Kubernetes system namespaces, even when it watches
every namespace: a ModelService there would become a Deployment that can run as any of the
cluster's own ServiceAccounts and mount their Secrets. The refusal is visible (status condition,
Warning Event, log line), never a silent skip."""
from __future__ import annotations

import copy
import logging

import kopf
import pytest

from modelservice.controller import handlers
from modelservice.__main__ import parse_args
from modelservice.controller.scope import SYSTEM_NAMESPACES, namespace_refusal


class RecordingKube:
    """The API as the handler sees it; records every call."""

    def __init__(self):
        self.calls: list[str] = []
        self.status: dict | None = None

    def apply(self, obj):
        self.calls.append(f"apply {obj['kind']} {obj['metadata']['namespace']}")
        return copy.deepcopy(obj)

    def get_deployment(self, namespace, name):
        self.calls.append(f"get Deployment {namespace}")
        return None

    def get_network_policy(self, namespace, name):
        self.calls.append(f"get NetworkPolicy {namespace}")
        return None

    def list_pods(self, namespace, selector):
        self.calls.append(f"list pods {namespace}")
        return []

    def list_nodes(self):
        self.calls.append("list nodes")
        return []

    def replace_status(self, namespace, name, status):
        self.calls.append(f"status {namespace}")
        self.status = copy.deepcopy(dict(status))


def modelservice(namespace: str) -> dict:
    return {"apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "emb", "namespace": namespace, "generation": 1, "uid": "u-1"},
            "spec": {"task": "embed", "model": "BAAI/bge-small-en-v1.5", "accelerator": "cpu", "replicas": 1}}


@pytest.fixture
def api(monkeypatch):
    """The fake API, which the tests hand to the handler through its memo as the startup handler does."""
    kube = RecordingKube()
    events: list[dict] = []
    monkeypatch.setattr(kopf, "warn", lambda body, *, reason, message, **_: events.append(
        {"namespace": body["metadata"]["namespace"], "reason": reason, "message": message}))
    kube.events = events
    return kube


@pytest.mark.parametrize("namespace", SYSTEM_NAMESPACES)
def test_a_modelservice_in_a_system_namespace_is_refused_visibly_and_nothing_is_applied(api, namespace, caplog):
    memo = kopf.Memo(kube=api, refused_namespaces=parse_args(["--all-namespaces"]).refused_namespaces)
    with caplog.at_level(logging.WARNING):
        handlers.reconcile_modelservice(body=modelservice(namespace), logger=logging.getLogger("test"), memo=memo)
    assert api.calls == [f"status {namespace}"]  # no Deployment, Service or node is read or written
    ready = next(c for c in api.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NamespaceRefused")
    assert namespace in ready["message"] and "operator.refusedNamespaces" in ready["message"]
    assert api.status["phase"] == "Failed"
    assert [(e["namespace"], e["reason"]) for e in api.events] == [(namespace, "NamespaceRefused")]
    assert [r.levelno for r in caplog.records if "NamespaceRefused" in r.getMessage()] == [logging.WARNING]


def test_an_application_namespace_is_served(api):
    handlers.reconcile_modelservice(body=modelservice("search"), logger=logging.getLogger("test"),
                                    memo=kopf.Memo(kube=api, refused_namespaces=SYSTEM_NAMESPACES))
    assert "apply Deployment search" in api.calls and not api.events


def test_the_refused_list_is_configurable_with_patterns_and_may_be_empty(api):
    args = parse_args(["--refused-namespaces=kube-*, sandbox"])
    assert namespace_refusal("kube-flannel", args.refused_namespaces) is not None
    assert namespace_refusal("sandbox", args.refused_namespaces) is not None
    assert namespace_refusal("sandbox-2", args.refused_namespaces) is None
    everything = kopf.Memo(kube=api, refused_namespaces=parse_args(["--refused-namespaces="]).refused_namespaces)
    handlers.reconcile_modelservice(body=modelservice("kube-system"), logger=logging.getLogger("test"),
                                    memo=everything)
    assert "apply Deployment kube-system" in api.calls and not api.events


def test_a_memo_without_the_setting_still_refuses_the_system_namespaces(api):
    """An operator started some other way than `python -m modelservice` (kopf run) is not open."""
    handlers.reconcile_modelservice(body=modelservice("kube-system"), logger=logging.getLogger("test"),
                                    memo=kopf.Memo(kube=api))
    assert api.calls == ["status kube-system"]
