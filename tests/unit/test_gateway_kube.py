"""The gateway's Kubernetes half without a cluster: which endpoints of an EndpointSlice are routed,
what it keeps of a ModelService, how watch lists and events become registry state, and the
addresses pods are routed at. The same code against the real control plane: tests/cluster/test_gateway.py.
"""
from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from gateway import kube
from gateway.kube import PodAddress, PodAddresses, Sources, model_info, ready_addresses
from gateway.registry import Endpoint, ModelKey, Registry
from modelservice.api import models as operator_models
from modelservice.placement.plan import PlanError, resolve_engine

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts" / "embedding-images" / "crds" / "modelservices.yaml"
NS = "apps"


def endpoint(pod: str, ip: str, ready: bool | None = True, terminating: bool = False) -> dict:
    conditions = {} if ready is None else {"ready": ready, "serving": ready, "terminating": terminating}
    return {"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": pod}}


def eps(name: str, service: str, *endpoints: dict, port: int = 8080, namespace: str = NS) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "1",
                         "labels": {kube.SERVICE_NAME_LABEL: service}},
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": list(endpoints)}


def ms(name: str, namespace: str = NS, **spec) -> dict:
    spec = {"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", **spec}
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"}, "spec": spec}


# --- API objects -> registry values --------------------------------------------------------------

def test_only_ready_endpoints_on_the_http_port_are_routed():
    slice_ = eps("m-abc", "m",
                 endpoint("m-1", "10.0.0.1"),
                 endpoint("m-2", "10.0.0.2", ready=False),                     # readiness probe failing
                 endpoint("m-3", "10.0.0.3", ready=False, terminating=True),   # going away
                 endpoint("m-4", "10.0.0.4", ready=None),                      # unknown: not routed
                 endpoint("m-5", "fd00::5"))
    slice_["ports"] = [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}]
    assert ready_addresses(slice_) == (PodAddress("m-1", "10.0.0.1:8080"), PodAddress("m-5", "[fd00::5]:8080"))
    slice_["ports"] = [{"name": "metrics", "port": 9090}]
    assert ready_addresses(slice_) == ()


def test_model_info_takes_the_operators_engine_and_the_desired_replicas():
    info = model_info({**ms("q", replicas=0, engine="auto"), "status": {"engine": "tei"}})
    assert (info.key, info.task, info.engine, info.model_id, info.replicas) == (
        ModelKey(NS, "q"), "rerank", "tei", "Qwen/Qwen3-Reranker-0.6B", 0)
    assert model_info(ms("q")).replicas == 1   # the CRD's default


@pytest.mark.parametrize("task, model, engine", list(itertools.product(
    ["embed", "rerank"], ["BAAI/bge-reranker-base", "Qwen/Qwen3-Reranker-0.6B", "/models/qwen3-RERANKER-4b"],
    ["auto", "tei", "reranker"])))
def test_engine_before_the_operator_reports_it_is_the_operators_choice(task, model, engine):
    try:
        expected = resolve_engine(task, model, engine)
    except PlanError:
        return   # the operator refuses the pair: it never gets pods, so nothing routes to it
    assert kube.resolve_engine(task, model, engine) == expected


def test_the_watched_api_is_the_operators_and_the_crd_has_the_scale_subresource():
    assert (kube.GROUP, kube.VERSION, kube.PLURAL) == (
        operator_models.GROUP, operator_models.VERSION, operator_models.PLURAL)
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == kube.VERSION]
    assert crd["spec"]["group"] == kube.GROUP and crd["spec"]["names"]["plural"] == kube.PLURAL
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"


# --- lists and events -> registry ----------------------------------------------------------------

def sources(watches: int = 2, addresses: PodAddresses | None = None) -> tuple[Sources, Registry]:
    registry = Registry(home_namespace=NS)
    return Sources(registry, watches=watches, addresses=addresses), registry


def test_a_slice_seen_before_its_modelservice_counts_and_pods_in_two_slices_count_once():
    s, registry = sources()
    s.list_slices("eps", NS, [eps("m-a", "m", endpoint("m-1", "10.0.0.1")),
                              eps("other-a", "other", endpoint("o-1", "10.0.0.9"))])
    assert registry.models() == []
    s.list_models("ms", NS, [ms("m")])
    assert registry.endpoints(ModelKey(NS, "m")) == (Endpoint("m-1", "10.0.0.1:8080"),)
    # The endpoint controller moves m-1 to a second slice and adds m-2 there.
    s.slice_event("ADDED", eps("m-b", "m", endpoint("m-1", "10.0.0.1"), endpoint("m-2", "10.0.0.2")))
    assert [e.pod for e in registry.endpoints(ModelKey(NS, "m"))] == ["m-1", "m-2"]
    s.slice_event("MODIFIED", eps("m-b", "m", endpoint("m-1", "10.0.0.1"), endpoint("m-2", "10.0.0.2", ready=False)))
    s.slice_event("DELETED", eps("m-a", "m"))
    assert registry.endpoints(ModelKey(NS, "m")) == (Endpoint("m-1", "10.0.0.1:8080"),)
    s.slice_event("DELETED", eps("m-b", "m"))
    assert registry.endpoints(ModelKey(NS, "m")) == ()


def test_a_relist_drops_what_went_away_while_the_watch_was_down_in_its_namespace_only():
    s, registry = sources(watches=4)
    s.list_models("ms/a", "a", [ms("one", "a"), ms("two", "a")])
    s.list_models("ms/b", "b", [ms("three", "b")])
    s.list_slices("eps/a", "a", [eps("two-x", "two", endpoint("two-1", "10.0.0.2"), namespace="a")])
    s.model_event("MODIFIED", ms("one", "a", replicas=0))
    assert {str(i.key): i.replicas for i in registry.models()} == {"a/one": 0, "a/two": 1, "b/three": 1}
    s.list_models("ms/a", "a", [ms("one", "a", replicas=0)])     # after a 410: "two" is gone
    s.list_slices("eps/a", "a", [])
    assert [str(i.key) for i in registry.models()] == ["a/one", "b/three"]
    s.model_event("DELETED", ms("one", "a"))
    assert [str(i.key) for i in registry.models()] == ["b/three"]


def test_synced_once_every_watch_has_listed():
    s, registry = sources(watches=4)
    s.list_models("ms/a", "a", [])
    s.list_slices("eps/a", "a", [])
    s.list_models("ms/a", "a", [])        # a relist of the same watch is not another watch
    assert not registry.synced
    s.list_models("ms/b", "b", [])
    assert not registry.synced
    s.list_slices("eps/b", "b", [])
    assert registry.synced


# --- pod addresses -------------------------------------------------------------------------------

def test_pods_are_routed_at_their_own_addresses():
    s, registry = sources()
    s.list_models("ms", NS, [ms("m")])
    s.list_slices("eps", NS, [eps("m-a", "m", endpoint("m-1", "10.0.0.1"), endpoint("m-2", "10.0.0.2"))])
    assert registry.endpoints(ModelKey(NS, "m")) == (Endpoint("m-1", "10.0.0.1:8080"), Endpoint("m-2", "10.0.0.2:8080"))
    assert PodAddresses().address(NS, PodAddress("m-1", "10.0.0.1:8080")) == "10.0.0.1:8080"


class ScaleApi:
    """The scale subresource as KubeScaler reads and patches it; `changes` are what other writers
    do between its read and its patch (each bumps the resourceVersion, as any write does)."""

    def __init__(self, changes):
        self.replicas, self.version, self.changes, self.patches = 0, 1, list(changes), []

    def get_namespaced_custom_object_scale(self, *args, **kwargs):
        spec = {"replicas": self.replicas} if self.replicas else {}    # 0 is left out, as served
        return SimpleNamespace(data=json.dumps({"metadata": {"resourceVersion": str(self.version)}, "spec": spec}))

    def patch_namespaced_custom_object_scale(self, group, version, namespace, plural, name, patch, **kwargs):
        if self.changes:
            change = self.changes.pop(0)
            self.version += 1
            if change == "replicas":
                self.replicas = 3
        self.patches.append(patch)
        if patch[0]["value"] != str(self.version):
            raise ApiException(status=422, reason="the test of resourceVersion failed")
        self.replicas = patch[1]["value"]


@pytest.mark.parametrize("changes, writes, replicas", [
    ([], 1, 1),
    (["status", "status"], 1, 1),   # the operator wrote the status meanwhile: read again, write
    (["replicas"], 0, 3),           # someone chose a count meanwhile: never overridden
    (["status"] * 5, 0, 0),         # changing without end: gives up after SCALE_ATTEMPTS
])
def test_scale_from_zero_retries_a_conflict_only_while_replicas_are_still_zero(monkeypatch, changes, writes, replicas):
    api = ScaleApi(changes)
    monkeypatch.setattr(kube.KubeScaler, "_custom", property(lambda self: api))
    scaler = kube.KubeScaler()
    asyncio.run(scaler.scale_from_zero(ModelKey("ns", "m")))
    assert (scaler.writes, api.replicas) == (writes, replicas)
    assert len(api.patches) == (1 if replicas == 3 else min(len(changes) + 1, kube.SCALE_ATTEMPTS))
