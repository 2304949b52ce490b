"""The ModelCache's handlers (modelservice.cache.handlers) and the cache gate of a ModelService's
reconcile (modelservice.controller.handlers.reconcile), against an API held in memory: no Deployment
before the cache holds a complete revision, DeleteWhenUnused deciding from the ModelServices
that exist now (not from the users the cache's status listed), and the users rolled when the
complete revision changes."""
from __future__ import annotations

import copy
import logging

import kopf
import pytest
from modelservice.api.models import parse_modelcache
from modelservice.cache import handlers as caching
from modelservice.cache.builders import CACHE_LABEL, claim_name, job_name
from modelservice.controller import handlers as controller

NS = "ml"
MODEL = "BAAI/bge-small-en-v1.5"
COMMIT = "c" * 40
LOG = logging.getLogger("test")


class FakeApi:
    """The API as the handlers see it (the methods of modelservice.controller.kube.Kube they call), one
    namespace, objects by name; every write recorded."""

    def __init__(self):
        self.modelservices: dict[str, dict] = {}
        self.caches: dict[str, dict] = {}
        self.claims: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.deployments: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.policies: dict[str, dict] = {}
        self.claim_templates: dict[str, dict] = {}
        self.applied: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []

    # ModelServices and ModelCaches
    def list_modelservices(self, namespace):
        return [copy.deepcopy(b) for b in self.modelservices.values()]

    def get_modelservice(self, namespace, name):
        return copy.deepcopy(self.modelservices.get(name))

    def replace_status(self, namespace, name, status, resource_version=None):
        self.modelservices[name]["status"] = copy.deepcopy(dict(status))

    def list_modelcaches(self, namespace):
        return [copy.deepcopy(b) for b in self.caches.values()]

    def get_modelcache(self, namespace, name):
        return copy.deepcopy(self.caches.get(name))

    def replace_cache_status(self, namespace, name, status):
        self.caches[name]["status"] = copy.deepcopy(dict(status))

    # children
    def apply(self, obj):
        obj = copy.deepcopy(dict(obj))
        kind, name = obj["kind"], obj["metadata"]["name"]
        self.applied.append((kind, name))
        obj["metadata"].setdefault("uid", f"uid-{kind}-{name}")
        if kind == "Deployment":
            obj["metadata"]["generation"] = 1
            obj["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                             "readyReplicas": 0, "availableReplicas": 0}
        store = {"Deployment": self.deployments, "Service": self.services,
                 "NetworkPolicy": self.policies, "PersistentVolumeClaim": self.claims,
                 "Job": self.jobs, "ResourceClaimTemplate": self.claim_templates}[kind]
        store[name] = obj
        return copy.deepcopy(obj)

    def delete(self, kind, namespace, name):
        self.deleted.append((kind, name))
        {"Job": self.jobs, "PersistentVolumeClaim": self.claims}[kind].pop(name, None)

    def get_claim(self, namespace, name):
        return copy.deepcopy(self.claims.get(name))

    def list_jobs(self, namespace, selector):
        key, _, value = selector.partition("=")
        return [copy.deepcopy(j) for j in self.jobs.values()
                if j["metadata"].get("labels", {}).get(key) == value]

    def list_pods(self, namespace, selector):
        return []

    def get_deployment(self, namespace, name):
        return copy.deepcopy(self.deployments.get(name))

    def get_service(self, namespace, name):
        return copy.deepcopy(self.services.get(name))

    def get_network_policy(self, namespace, name):
        return copy.deepcopy(self.policies.get(name))

    def delete_network_policy(self, namespace, name, uid):
        self.policies.pop(name, None)

    def list_nodes(self):
        return []

    def list_claim_templates(self, namespace, selector):
        return [copy.deepcopy(t) for t in self.claim_templates.values()]

    def delete_claim_template(self, namespace, name):
        self.deleted.append(("ResourceClaimTemplate", name))
        self.claim_templates.pop(name, None)


def modelservice(name, cache="qwen", deleting=False):
    body = {"apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelService",
            "metadata": {"name": name, "namespace": NS, "generation": 1, "uid": f"uid-{name}"},
            "spec": {"task": "embed", "model": MODEL, "accelerator": "cpu", "replicas": 1}}
    if cache is not None:
        body["spec"]["cache"] = {"modelCache": cache}
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return body


def modelcache(name="qwen", status=None, **spec):
    return {"apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelCache",
            "metadata": {"name": name, "namespace": NS, "generation": 1, "uid": f"uid-{name}"},
            "spec": {"model": MODEL, "size": "10Gi", **spec}, "status": status or {}}


def complete(path="/models/models/BAAI--bge-small-en-v1.5/main", **extra):
    """The status of a cache whose default revision is on its volume."""
    return {"revision": "main", "commit": COMMIT, "path": path, "bytes": 10, "files": 2,
            "claimName": claim_name("qwen"), **extra}


@pytest.fixture
def api():
    return FakeApi()


SETTINGS = caching.DownloadSettings(image="downloader:1")


def reconcile_cache(api, name="qwen"):
    return caching.reconcile_cache(api, api.get_modelcache(NS, name), LOG, SETTINGS)


def memo(api):
    return kopf.Memo(kube=api, download=SETTINGS)


def mounted_claims(deployment):
    return [v["persistentVolumeClaim"]["claimName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v]


# --- the cache gate in a ModelService's reconcile --------------------------------------------------


def test_no_deployment_while_the_cache_is_downloading_then_one_that_mounts_it(api):
    api.caches["qwen"] = modelcache(status={"claimName": claim_name("qwen"), "conditions": [
        {"type": "Cached", "status": "False", "reason": "Downloading", "message": "fetching"}]})
    api.modelservices["emb"] = modelservice("emb")
    with pytest.raises(kopf.TemporaryError):
        controller.reconcile(api, api.get_modelservice(NS, "emb"), LOG)
    assert api.deployments == {}
    ready = next(c for c in api.modelservices["emb"]["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ModelCacheNotReady")
    assert "Downloading" in ready["message"]

    api.caches["qwen"]["status"] = complete()
    controller.reconcile(api, api.get_modelservice(NS, "emb"), LOG)
    assert mounted_claims(api.deployments["emb"]) == [claim_name("qwen")]


def test_no_deployment_for_a_cache_that_does_not_exist_or_holds_another_model(api):
    api.modelservices["emb"] = modelservice("emb")
    with pytest.raises(kopf.TemporaryError):
        controller.reconcile(api, api.get_modelservice(NS, "emb"), LOG)
    api.caches["qwen"] = modelcache(status=complete(), model="other/model")
    with pytest.raises(kopf.PermanentError):
        controller.reconcile(api, api.get_modelservice(NS, "emb"), LOG)
    assert api.deployments == {}


def test_a_new_revision_is_fetched_into_the_volume_of_the_complete_one(api):
    api.caches["qwen"] = modelcache(status=complete(), revision="v2")
    api.claims[claim_name("qwen")] = {"metadata": {"name": claim_name("qwen")}}
    reconcile_cache(api)
    assert [kind for kind, _ in api.applied] == ["PersistentVolumeClaim", "Job"]
    assert job_name(parse_modelcache(api.caches["qwen"])) in api.jobs


# --- reconcile_cache ----------------------------------------------------------------------------


def test_delete_when_unused_deletes_the_volume_when_no_modelservice_names_it_now(api):
    """The status still lists `emb` (its deletion's event is what runs this): the list of
    ModelServices that exist decides."""
    api.caches["qwen"] = modelcache(status=complete(users=["emb"]), retention="DeleteWhenUnused")
    api.claims[claim_name("qwen")] = {"metadata": {"name": claim_name("qwen")}}
    reconcile_cache(api)
    assert ("PersistentVolumeClaim", claim_name("qwen")) in api.deleted
    assert api.caches["qwen"]["status"].get("users", []) == []


def test_delete_when_unused_keeps_the_volume_of_a_user_the_status_does_not_list_yet(api):
    """A ModelService created a moment ago names the cache; the status (written before it)
    lists no user: the volume stays, and the status lists the new user."""
    api.caches["qwen"] = modelcache(status=complete(users=[]), retention="DeleteWhenUnused")
    api.claims[claim_name("qwen")] = {"metadata": {"name": claim_name("qwen")}}
    api.modelservices["emb"] = modelservice("emb")
    reconcile_cache(api)
    assert api.deleted == []
    assert claim_name("qwen") in api.claims
    assert api.caches["qwen"]["status"]["users"] == ["emb"]


def test_a_modelservice_being_deleted_or_naming_another_cache_is_no_user(api):
    api.caches["qwen"] = modelcache(status=complete(users=["emb", "other"]), retention="DeleteWhenUnused")
    api.claims[claim_name("qwen")] = {"metadata": {"name": claim_name("qwen")}}
    api.modelservices["emb"] = modelservice("emb", deleting=True)
    api.modelservices["other"] = modelservice("other", cache="another-cache")
    reconcile_cache(api)
    assert ("PersistentVolumeClaim", claim_name("qwen")) in api.deleted


def test_retain_keeps_the_volume_with_no_user(api):
    api.caches["qwen"] = modelcache(status=complete(users=["emb"]))
    api.claims[claim_name("qwen")] = {"metadata": {"name": claim_name("qwen")}}
    reconcile_cache(api)
    assert api.deleted == [] and claim_name("qwen") in api.claims


def test_the_first_user_of_an_unused_cache_starts_its_download(api):
    api.caches["qwen"] = modelcache(retention="DeleteWhenUnused")
    reconcile_cache(api)
    assert api.jobs == {} and api.claims == {}   # nobody needs it: nothing fetched
    api.modelservices["emb"] = modelservice("emb")
    caching.modelservice_cache_event({"type": "ADDED"}, api.get_modelservice(NS, "emb"),
                                     memo(api), LOG)
    assert claim_name("qwen") in api.claims
    (job,) = api.jobs.values()
    assert job["metadata"]["labels"][CACHE_LABEL] == "qwen"


def test_the_last_users_deletion_event_deletes_an_unused_volume(api):
    api.caches["qwen"] = modelcache(status=complete(users=["emb"]), retention="DeleteWhenUnused")
    api.claims[claim_name("qwen")] = {"metadata": {"name": claim_name("qwen")}}
    gone = modelservice("emb")   # deleted: no longer listed, its last body comes with the event
    caching.modelservice_cache_event({"type": "DELETED"}, gone, memo(api), LOG)
    assert ("PersistentVolumeClaim", claim_name("qwen")) in api.deleted


def test_a_complete_revision_runs_no_job_and_another_revisions_job_is_deleted(api):
    api.caches["qwen"] = modelcache(status=complete(users=["emb"]))
    api.claims[claim_name("qwen")] = {"metadata": {"name": claim_name("qwen")}}
    api.modelservices["emb"] = modelservice("emb")
    old = {"kind": "Job", "metadata": {"name": "qwen-oldrevision", "labels": {CACHE_LABEL: "qwen"}}}
    api.jobs["qwen-oldrevision"] = old
    reconcile_cache(api)
    assert api.jobs == {}
    assert ("Job", "qwen-oldrevision") in api.deleted


def test_a_new_complete_revision_rolls_the_users(api):
    """The cache's path changes (a new revision complete): each user's Deployment mounts it."""
    api.caches["qwen"] = modelcache(status=complete(users=["emb"]))
    api.modelservices["emb"] = modelservice("emb")
    controller.reconcile(api, api.get_modelservice(NS, "emb"), LOG)
    before = api.deployments["emb"]
    old, new = complete(users=["emb"]), complete(path="/models/models/BAAI--bge-small-en-v1.5/v2",
                                                 users=["emb"])
    api.caches["qwen"]["status"] = new
    caching.roll_users(api, NS, old, new, LOG, memo(api))
    after = api.deployments["emb"]
    assert after != before
    assert "/models/models/BAAI--bge-small-en-v1.5/v2" in str(after["spec"]["template"])


def test_a_roll_by_the_cache_keeps_the_operators_gpu_sharing_mechanism(api):
    """A new complete revision re-plans the cache's users with the operator's --gpu-sharing: on a
    device-plugin cluster a shared ModelService keeps asking for the shared resource, not for a
    DRA claim the cluster has no driver for."""
    from modelservice.placement.sharing import MEMORY_RESOURCE, SHARED_RESOURCE, SharingMechanism

    api.list_nodes = lambda: [{
        "metadata": {"name": "gpu-l4", "labels": {
            "nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.compute.major": "8",
            "nvidia.com/gpu.compute.minor": "9", "nvidia.com/gpu.memory": "23034"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"nvidia.com/gpu": "1", SHARED_RESOURCE: "4", MEMORY_RESOURCE: "23034"}}}]
    api.caches["qwen"] = modelcache(status=complete(users=["emb"]))
    body = modelservice("emb")
    del body["spec"]["accelerator"]
    body["spec"]["gpu"] = {"sharing": {"mode": "Shared"}}
    api.modelservices["emb"] = body
    device_plugin = kopf.Memo(kube=api, download=SETTINGS, gpu_sharing=SharingMechanism.DEVICE_PLUGIN)
    controller.reconcile(api, api.get_modelservice(NS, "emb"), LOG, sharing=SharingMechanism.DEVICE_PLUGIN)
    old, new = complete(users=["emb"]), complete(path="/models/models/BAAI--bge-small-en-v1.5/v2",
                                                 users=["emb"])
    api.caches["qwen"]["status"] = new
    caching.roll_users(api, NS, old, new, LOG, device_plugin)
    pod = api.deployments["emb"]["spec"]["template"]["spec"]
    assert "/models/models/BAAI--bge-small-en-v1.5/v2" in str(pod)
    assert SHARED_RESOURCE in pod["containers"][0]["resources"].get("limits", {})
    assert "resourceClaims" not in pod
