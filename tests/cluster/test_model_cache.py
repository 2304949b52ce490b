"""ModelCache on the real control plane: the claim and the download Job as designed, kwok
completing the Job's pod, the Cached condition, and ModelService pods that exist only once the
cache is ready, mount it read-only and run offline.

No provisioner runs here: each test pre-creates a PersistentVolume (hostPath, a folder of the
test's) bound to the cache's claim, as an administrator would for static provisioning. kwok's
pods run no process, so here the download Job "succeeds" without fetching anything; the download
itself runs for real in tests/service/test_model_download.py (and below, where the Job's own
command runs against the local Hub stand-in). Traffic never goes to a kwok pod's IP.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from control_plane import MODELCACHE_CRD, MODELSERVICE_CRD, ROOT, Cluster, KubectlError, wait_for
from testkit.hub import HubServer, files_of
from test_gateway import admin_client
from test_operator import API, Operator, condition

pytestmark = pytest.mark.cluster

CRDS = [MODELSERVICE_CRD, MODELCACHE_CRD]
QWEN = "Qwen/Qwen3-Reranker-0.6B"
DOWNLOADER_IMAGE = "embedding-images/operator:test"


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    cluster.apply_crds(*CRDS)


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    """The Hub stand-in on 127.0.0.1 (testkit.hub): the Jobs' HF_ENDPOINT."""
    with HubServer() as server:
        yield server


@pytest.fixture(scope="module")
def operator(cluster: Cluster, crds: None, hub: HubServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log", namespace="mcache-*",
                  refused="mcache-refused-*",
                  env={"MODELSERVICE_DOWNLOADER_IMAGE": DOWNLOADER_IMAGE, "MODELSERVICE_RESYNC_SECONDS": "5",
                       "MODELSERVICE_HF_ENDPOINT": hub.url})
    op.start()
    try:
        yield op
    finally:
        op.stop()


class Volumes:
    """PersistentVolumes made for one test's claims (hostPath folders under the test's tmp dir)."""

    def __init__(self, cluster: Cluster, ns: str, root: Path):
        self.cluster, self.ns, self.root = cluster, ns, root
        self.names: list[str] = []

    def for_claim(self, claim: str, size: str = "1Gi", access: str = "ReadWriteOnce") -> Path:
        name = f"{self.ns}-{claim}"
        path = self.root / claim
        path.mkdir(parents=True, exist_ok=True)
        self.cluster.apply({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": [access],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "cache-test",
                     "hostPath": {"path": str(path)},
                     "claimRef": {"namespace": self.ns, "name": claim}}})
        self.names.append(name)
        return path

    def delete(self) -> None:
        for name in self.names:
            self.cluster.kubectl("delete", "pv", name, "--wait=false", check=False)


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    name = f"mcache-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "modelservices,modelcaches", "--all", "-n", name, "--wait=true", "--timeout=60s",
                    check=False)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def volumes(cluster: Cluster, ns: str, tmp_path: Path) -> Iterator[Volumes]:
    v = Volumes(cluster, ns, tmp_path / "volumes")
    yield v
    v.delete()


def modelcache(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelCache", "metadata": {"name": name},
            "spec": {"size": "1Gi", "storageClassName": "cache-test", **spec}}


def reranker(name: str, cache: str, model: str = QWEN, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelService", "metadata": {"name": name},
            "spec": {"task": "rerank", "model": model, "accelerator": "cpu", "cache": {"modelCache": cache}, **spec}}


def cached(cluster: Cluster, ns: str, name: str, operator: Operator, reason: str = "Downloaded",
           timeout: float = 90) -> dict[str, Any]:
    def probe():
        cache = cluster.get("modelcache", name, "-n", ns)
        cond = next((c for c in (cache.get("status") or {}).get("conditions") or [] if c["type"] == "Cached"), {})
        return cache if cond.get("reason") == reason and cache["status"].get("observedGeneration") == \
            cache["metadata"]["generation"] else None
    try:
        return wait_for(f"ModelCache {ns}/{name} {reason}", probe, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.tail()}") from None


def ms_reason(cluster: Cluster, ns: str, name: str) -> str | None:
    got = condition(cluster.get("modelservice", name, "-n", ns), "Ready")
    return got[1] if got else None


def jobs(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return cluster.get("jobs", "-n", ns)["items"]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_pods_wait_for_the_cache_then_mount_it_read_only_and_run_offline(cluster, operator, ns, volumes):
    volumes.for_claim("modelcache-qwen")
    cluster.apply(reranker("rr", "qwen"), ns)
    wait_for("ModelCacheNotFound", lambda: ms_reason(cluster, ns, "rr") == "ModelCacheNotFound", timeout=30)
    assert cluster.kubectl("get", "deployment", "rr", "-n", ns, check=False).returncode != 0

    cluster.kubectl("create", "secret", "generic", "hf", "-n", ns, "--from-literal=token=hf_test")
    cluster.apply(modelcache("qwen", model=QWEN, hfTokenSecretRef={"name": "hf"}), ns)
    cache = cached(cluster, ns, "qwen", operator)
    status = cache["status"]
    path = "/models/models/Qwen--Qwen3-Reranker-0.6B/main"
    assert status["path"] == path and status["revision"] == "main"
    assert status["claimName"] == "modelcache-qwen" and status["users"] == ["rr"]
    assert status["nodeName"].startswith("cpu-")   # ReadWriteOnce: the node the download ran on

    claim = cluster.get("pvc", "modelcache-qwen", "-n", ns)
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["storageClassName"] == "cache-test"
    assert claim["metadata"]["ownerReferences"][0]["kind"] == "ModelCache"
    (job,) = jobs(cluster, ns)
    assert job["status"]["succeeded"] == 1
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == DOWNLOADER_IMAGE
    assert container["command"] == ["python", "-m", "modelservice.cache.download"]
    assert container["args"] == ["--model", QWEN, "--revision", "main", "--dir", "/models"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in container["env"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert pod["automountServiceAccountToken"] is False

    # The pods came only after the cache was ready, and run from it, offline, on its node.
    dep = wait_for("the Deployment", lambda: cluster.get("deployment", "rr", "-n", ns), timeout=60)
    cached_at = next(c for c in status["conditions"] if c["type"] == "Cached")["lastTransitionTime"]
    assert dep["metadata"]["creationTimestamp"] >= cached_at
    assert dep["metadata"]["creationTimestamp"] >= job["status"]["completionTime"]
    spec = dep["spec"]["template"]["spec"]
    env = env_of(dep)
    assert env["RERANKER_MODEL"] == path and env["HF_HUB_OFFLINE"] == "1"
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "modelcache-qwen", "readOnly": True}} in spec["volumes"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in spec["containers"][0]["volumeMounts"]
    assert spec["nodeSelector"]["kubernetes.io/hostname"] == status["nodeName"]
    ms = wait_for("rr Ready", lambda: ms_reason(cluster, ns, "rr") == "AllReplicasReady", timeout=60)
    assert ms
    ms = cluster.get("modelservice", "rr", "-n", ns)
    assert ms["status"]["modelCache"] == {"name": "qwen", "claimName": "modelcache-qwen", "path": path,
                                          "nodeName": status["nodeName"]}
    (pod_of_rr,) = cluster.get("pods", "-n", ns, "-l", "serving.embedding-images.io/modelservice=rr")["items"]
    assert pod_of_rr["spec"]["nodeName"] == status["nodeName"]
    assert pod_of_rr["metadata"]["creationTimestamp"] >= cached_at

    # A second ModelService of the same model and revision: no second download.
    cluster.apply(reranker("rr2", "qwen", replicas=2), ns)
    wait_for("rr2 Ready", lambda: ms_reason(cluster, ns, "rr2") == "AllReplicasReady", timeout=60)
    assert [j["metadata"]["name"] for j in jobs(cluster, ns)] == [job["metadata"]["name"]]
    wait_for("both users listed", lambda: cluster.get("modelcache", "qwen", "-n", ns)["status"].get("users")
             == ["rr", "rr2"], timeout=30)


def test_a_new_revision_is_fetched_before_the_pods_roll_to_it(cluster, operator, ns, volumes):
    volumes.for_claim("modelcache-qwen")
    cluster.apply(modelcache("qwen", model=QWEN), ns)
    first = cached(cluster, ns, "qwen", operator)
    cluster.apply(reranker("rr", "qwen"), ns)
    wait_for("rr Ready", lambda: ms_reason(cluster, ns, "rr") == "AllReplicasReady", timeout=60)
    (old_job,) = jobs(cluster, ns)

    cluster.kubectl("patch", "modelcache", "qwen", "-n", ns, "--type=merge", "-p", '{"spec":{"revision":"v2"}}')
    second = cached(cluster, ns, "qwen", operator)
    assert second["status"]["revision"] == "v2"
    assert second["status"]["path"] == "/models/models/Qwen--Qwen3-Reranker-0.6B/v2"
    new_job = wait_for("the old Job removed", lambda: [j for j in jobs(cluster, ns)
                                                       if j["metadata"]["name"] != old_job["metadata"]["name"]]
                       and len(jobs(cluster, ns)) == 1 and jobs(cluster, ns)[0], timeout=30)
    assert new_job["spec"]["template"]["spec"]["containers"][0]["args"][3] == "v2"

    def rolled():
        dep = cluster.get("deployment", "rr", "-n", ns)
        return dep if env_of(dep)["RERANKER_MODEL"].endswith("/v2") else None
    wait_for("the pods rolled to v2", rolled, timeout=60)
    # ... and stay there: the child handlers and the resync (every 5 s here) must take v2 as the
    # plan, not "put back" the Deployment of the revision the status recorded before the roll.
    time.sleep(6)
    assert env_of(cluster.get("deployment", "rr", "-n", ns))["RERANKER_MODEL"].endswith("/v2")
    # The ReplicaSet of v2 was made only once the v2 download was complete.
    sets = cluster.get("replicasets", "-n", ns, "-l", "serving.embedding-images.io/modelservice=rr")["items"]
    newest = max(sets, key=lambda s: s["metadata"]["creationTimestamp"])
    assert newest["metadata"]["creationTimestamp"] >= new_job["status"]["completionTime"]
    assert len(sets) == 2
    assert first["status"]["path"].endswith("/main")


def test_retention_delete_when_unused_removes_the_volume_with_its_last_user(cluster, operator, ns, volumes):
    volumes.for_claim("modelcache-temp")
    cluster.apply(modelcache("temp", model=QWEN, retention="DeleteWhenUnused"), ns)
    cached(cluster, ns, "temp", operator, reason="Unused")   # nobody uses it: nothing is fetched
    assert jobs(cluster, ns) == []
    assert cluster.kubectl("get", "pvc", "modelcache-temp", "-n", ns, check=False).returncode != 0

    cluster.apply(reranker("rr", "temp"), ns)
    cached(cluster, ns, "temp", operator)
    wait_for("rr Ready", lambda: ms_reason(cluster, ns, "rr") == "AllReplicasReady", timeout=60)
    cluster.kubectl("delete", "modelservice", "rr", "-n", ns, "--wait=true")
    cache = cached(cluster, ns, "temp", operator, reason="Unused")
    assert "path" not in cache["status"]
    wait_for("the claim deleted", lambda: cluster.kubectl("get", "pvc", "modelcache-temp", "-n", ns,
                                                          check=False).returncode != 0, timeout=30)
    wait_for("the Jobs deleted", lambda: jobs(cluster, ns) == [], timeout=30)

    # Keep (the default): the last user goes, the files stay.
    volumes.for_claim("modelcache-kept")
    cluster.apply(modelcache("kept", model=QWEN), ns)
    cluster.apply(reranker("rr", "kept"), ns)
    cached(cluster, ns, "kept", operator)
    cluster.kubectl("delete", "modelservice", "rr", "-n", ns, "--wait=true")
    wait_for("no users left", lambda: not cluster.get("modelcache", "kept", "-n", ns)["status"].get("users"), timeout=30)
    assert cluster.get("pvc", "modelcache-kept", "-n", ns)["status"]["phase"] == "Bound"
    assert condition(cluster.get("modelcache", "kept", "-n", ns), "Cached") == ("True", "Downloaded")


def test_a_cache_of_another_model_is_refused_with_a_reason(cluster, operator, ns, volumes):
    volumes.for_claim("modelcache-bge")
    cluster.apply(modelcache("bge", model="BAAI/bge-reranker-v2-m3"), ns)
    cached(cluster, ns, "bge", operator)
    cluster.apply(reranker("rr", "bge"), ns)
    wait_for("ModelCacheModelMismatch", lambda: ms_reason(cluster, ns, "rr") == "ModelCacheModelMismatch", timeout=30)
    message = next(c for c in cluster.get("modelservice", "rr", "-n", ns)["status"]["conditions"]
                   if c["type"] == "Ready")["message"]
    assert QWEN in message and "BAAI/bge-reranker-v2-m3" in message
    assert cluster.kubectl("get", "deployment", "rr", "-n", ns, check=False).returncode != 0


@pytest.mark.parametrize("patch, field, words", [
    ({"model": "BAAI/bge-m3"}, "spec.model", "immutable"),
    ({"accessMode": "ReadWriteMany"}, "spec.accessMode", "immutable"),
    ({"storageClassName": "other"}, "spec.storageClassName", "immutable"),
])
def test_fields_fixed_at_creation_are_refused_naming_the_field(cluster, operator, ns, volumes, patch, field, words):
    volumes.for_claim("modelcache-qwen")
    cluster.apply(modelcache("qwen", model=QWEN), ns)
    with pytest.raises(KubectlError) as refused:
        cluster.kubectl("patch", "modelcache", "qwen", "-n", ns, "--type=merge", "-p", json.dumps({"spec": patch}))
    assert field in refused.value.stderr and words in refused.value.stderr


@pytest.mark.parametrize("manifest, field, words", [
    (modelcache("a" * 53, model=QWEN), "metadata", "at most 52"),
    ({**modelcache("q", model=QWEN), "spec": {"model": QWEN}}, "spec.size", "Required value"),
    (modelcache("q", model="no-org"), "spec.model", "should match"),
    (modelcache("q", model=QWEN, accessMode="ReadOnlyMany"), "spec.accessMode", "Unsupported value"),
    (modelcache("q", model=QWEN, retention="Never"), "spec.retention", "Unsupported value"),
    (reranker("rr", "qwen", revision="v2"), "spec.revision", "the revision served is the ModelCache's"),
])
def test_bad_caches_are_refused_at_apply_naming_the_field(cluster, crds, ns, manifest, field, words):
    with pytest.raises(KubectlError) as refused:
        cluster.apply(manifest, ns)
    assert field in refused.value.stderr and words in refused.value.stderr, refused.value.stderr


def run_job_here(cluster: Cluster, ns: str, job: dict[str, Any], folders: dict[str, Path], tmp: Path) -> dict:
    """Runs the download Job's container as a kubelet would, but on this machine: its command
    with its env (Secret references resolved) and its mounts mapped to local folders
    (`folders`: mount path -> folder; /tmp, an emptyDir, to a fresh one). Returns the
    termination message it wrote."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            data = cluster.get("secret", ref["name"], "-n", ns)["data"]
            env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
    folders = {**folders, "/tmp": tmp / "emptydir-tmp"}
    folders["/tmp"].mkdir(parents=True, exist_ok=True)

    def local(value: str) -> str:
        for mount, folder in folders.items():
            if value == mount or value.startswith(mount + "/"):
                return str(folder) + value[len(mount):]
        return value
    assert container["command"][0] == "python"
    termination = tmp / "termination-log"
    proc = subprocess.run([sys.executable, *container["command"][1:], *map(local, container["args"]),
                           "--termination-log", str(termination)],
                          env={k: v for k, v in cluster.env.items() if k in ("PATH", "PYTHONPATH")}
                          | {k: local(v) for k, v in env.items()},
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(termination.read_text())


def test_the_jobs_own_command_fills_the_volume_and_new_replicas_fetch_nothing(cluster, operator, hub, ns,
                                                                               volumes, tmp_path):
    """The Job the operator made, run for real against the Hub stand-in (a private repository: the
    token comes from the Secret the ModelCache names), fills the volume's folder; the local pod
    runner then starts the real reranker of each ModelService pod from that folder, offline, and
    the Hub sees no request from any replica."""
    from testkit.podrunner import LocalPodRunner
    from testkit.models import shared_tiny_model

    hub.add_repo(QWEN, files_of(shared_tiny_model(tmp_path / "model")), token="hf_test")
    folder = volumes.for_claim("modelcache-qwen")
    cluster.kubectl("create", "secret", "generic", "hf", "-n", ns, "--from-literal=token=hf_test")
    cluster.apply(modelcache("qwen", model=QWEN, hfTokenSecretRef={"name": "hf"}), ns)
    (job,) = wait_for("the download Job", lambda: jobs(cluster, ns), timeout=30)
    hub.reset_counters()
    result = run_job_here(cluster, ns, job, {"/models": folder}, tmp_path)
    fetched = sum(hub.body_bytes.values())
    assert result["bytes"] > 0 and fetched >= result["bytes"], (result, fetched)
    cached(cluster, ns, "qwen", operator)

    hub.reset_counters()
    cluster.apply(reranker("rr", "qwen"), ns)
    runner = LocalPodRunner(admin_client(cluster), ns, ["rr"], tmp_path / "no-model-here",
                            tmp_path / "addresses.json", tmp_path).start()
    try:
        def serving(count: int):
            return len(runner.running) == count and list(runner.running.values())
        (first,) = wait_for("the reranker of rr's pod", lambda: serving(1), timeout=180)
        assert first.env["RERANKER_MODEL"] == f"{folder}/models/Qwen--Qwen3-Reranker-0.6B/main"
        assert first.env["HF_HUB_OFFLINE"] == "1"
        cluster.kubectl("scale", "modelservice", "rr", "-n", ns, "--replicas=2")
        replicas = wait_for("a second replica's reranker", lambda: serving(2), timeout=180)
        for replica in replicas:
            answer = httpx.post(f"http://{replica.backend.address}/v1/rerank",
                                json={"query": "q", "documents": ["a", "b"]}, timeout=30)
            assert answer.status_code == 200 and len(answer.json()["results"]) == 2
    finally:
        runner.stop()
    assert hub.requests == {} and sum(hub.body_bytes.values()) == 0, hub.log
    print(f"\nmodel cache bytes: the download Job fetched {fetched:,} ({result['files']} files, "
          f"{result['bytes']:,} on disk); each new replica with the cache fetched 0 "
          f"(without it, each would fetch the same {result['bytes']:,} from the Hub at start)")


def test_a_cache_in_a_refused_namespace_gets_no_claim_and_no_job(cluster, operator):
    """As a ModelService there is refused (test_operator.py): nothing is created in it."""
    name = f"mcache-refused-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        cluster.apply(modelcache("qwen", model=QWEN), name)
        cache = cached(cluster, name, "qwen", operator, reason="NamespaceRefused", timeout=30)
        assert name in cache["status"]["conditions"][0]["message"]
        assert cluster.get("jobs,pvc", "-n", name)["items"] == []
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
