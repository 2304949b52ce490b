"""Several small models on one GPU (spec.gpu.sharing), packed by the real kube-scheduler with DRA.

The module publishes what the NVIDIA DRA driver would for the simulated GPU nodes
(testkit/dra.py: the DeviceClass gpu.nvidia.com and one ResourceSlice per node, a device per GPU
with its memory as consumable capacity, from the nodes' GFD labels); the control plane runs with
DRAConsumableCapacity (tests/cluster/kwokctl.yaml). The operator (`--gpu-sharing=dra`) gives each
pod a claim for its share; the kube-scheduler allocates, and kwok runs the pods it binds.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Iterator

import pytest
from kubernetes.utils import parse_quantity

from control_plane import ROOT, Cluster, KubectlError, wait_for
from test_operator import API, Operator, condition, pods
from modelservice.placement.estimate import estimate_memory
from testkit.dra import published

pytestmark = pytest.mark.cluster

CRD_FILES = [ROOT / "charts" / "embedding-images" / "crds" / f"{p}.yaml" for p in ("modelservices", "modelcaches")]
L4 = "NVIDIA-L4"
H100 = "NVIDIA-H100-80GB-HBM3"
BGE_SMALL = "BAAI/bge-small-en-v1.5"
RERANKER = "Qwen/Qwen3-Reranker-0.6B"


@pytest.fixture(scope="module")
def dra(cluster: Cluster, gpu_nodes: dict[str, dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    objects = published(gpu_nodes.values())
    for obj in objects:
        cluster.apply(obj)
    yield objects
    for obj in objects:
        cluster.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, dra: list, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    for path in CRD_FILES:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    op = Operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log", namespace="gpushare-*",
                  env={"MODELSERVICE_GPU_SHARING": "dra", "MODELSERVICE_RESYNC_SECONDS": "3"})
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    name = f"gpushare-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "modelservices", "--all", "-n", name, "--wait=true", "--timeout=60s", check=False)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def shared(name: str, model: str, product: str, task: str = "embed", **sharing: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelService", "metadata": {"name": name},
            "spec": {"task": task, "model": model, "gpu": {"product": product, "sharing": {"mode": "Shared", **sharing}}}}


def ms_state(cluster: Cluster, ns: str, name: str) -> tuple[str, str] | None:
    return condition(cluster.get("modelservice", name, "-n", ns), "Ready")


def wait_reason(cluster: Cluster, ns: str, name: str, reason: str, op: Operator, timeout: float = 60) -> dict:
    def reached():
        ms = cluster.get("modelservice", name, "-n", ns)
        return ms if (condition(ms, "Ready") or ("", ""))[1] == reason else None
    try:
        return wait_for(f"{ns}/{name} Ready reason {reason}", reached, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{op.tail()}") from None


def allocations(cluster: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    """Each allocated claim's one device result (pool, device, consumedCapacity), by its pod."""
    out = {}
    for claim in cluster.get("resourceclaims", "-n", ns)["items"]:
        allocation = (claim.get("status") or {}).get("allocation")
        if not allocation:
            continue
        (result,) = allocation["devices"]["results"]
        out[claim["metadata"]["ownerReferences"][0]["name"]] = result
    return out


def mib(quantity: str) -> int:
    """MiB of a quantity as the API writes it (it canonicalises 2048Mi to 2Gi)."""
    return int(parse_quantity(quantity)) // (1024 * 1024)


def test_small_models_share_one_l4_and_a_freed_share_goes_to_a_pending_one(cluster, operator, ns):
    small = estimate_memory(BGE_SMALL, "tei").total_mib
    rerank = estimate_memory(RERANKER, "reranker").total_mib
    names = [f"bge-{i}" for i in range(6)]
    for name in names:
        cluster.apply(shared(name, BGE_SMALL, L4), ns)
    cluster.apply(shared("rerank", RERANKER, L4, task="rerank"), ns)
    for name in [*names, "rerank"]:
        wait_reason(cluster, ns, name, "AllReplicasReady", operator)

    # Every pod is on the one L4, each with its own claim on its one device.
    running = cluster.get("pods", "-n", ns)["items"]
    assert len(running) == 7 and {p["spec"]["nodeName"] for p in running} == {"gpu-l4"}
    allocated = allocations(cluster, ns)
    assert len(allocated) == 7
    assert {(a["pool"], a["device"]) for a in allocated.values()} == {("gpu-l4", "gpu-0")}
    consumed = sorted(mib(a["consumedCapacity"]["memory"]) for a in allocated.values())
    assert consumed == sorted([small] * 6 + [rerank])

    # What a user reads: the share in the status and in `kubectl get -o wide`.
    ms = cluster.get("modelservice", "rerank", "-n", ns)
    assert ms["status"]["gpuShare"]["memory"] == f"{rerank}Mi"
    assert ms["status"]["gpuShare"]["source"] == "Estimate" and ms["status"]["gpuShare"]["mechanism"] == "DRA"
    wide = cluster.kubectl("get", "modelservices", "-n", ns, "-o", "wide").stdout
    assert "GPU-MEMORY" in wide and f"{small}Mi" in wide

    # A share larger than what is left of the L4 waits, with the scheduler's reason in the status.
    free = 23034 - sum(consumed)
    big = free + 1024
    cluster.apply(shared("big", "BAAI/bge-m3", L4, memory=f"{big}Mi"), ns)
    pending = wait_reason(cluster, ns, "big", "Unschedulable", operator)
    ready = next(c for c in pending["status"]["conditions"] if c["type"] == "Ready")
    assert "cannot allocate all claims" in ready["message"]
    assert pending["status"]["phase"] == "Pending"

    # Deleting one small model frees its share: the waiting one is scheduled onto the same GPU.
    cluster.kubectl("delete", "modelservice", "bge-0", "-n", ns, "--wait=true", "--timeout=60s")
    wait_reason(cluster, ns, "big", "AllReplicasReady", operator)
    (pod,) = pods(cluster, ns, "big")
    assert pod["spec"]["nodeName"] == "gpu-l4"


def test_a_share_that_does_not_fit_one_gpu_goes_to_another(cluster, operator, ns):
    for name in ("first", "second"):
        cluster.apply(shared(name, "BAAI/bge-m3", H100, memory="50Gi"), ns)
    for name in ("first", "second"):
        wait_reason(cluster, ns, name, "AllReplicasReady", operator)
    devices = {(a["pool"], a["device"]) for a in allocations(cluster, ns).values()}
    assert len(devices) == 2 and {pool for pool, _ in devices} == {"gpu-h100"}


def test_replicas_of_one_modelservice_pack_and_scale_like_pods(cluster, operator, ns):
    cluster.apply(shared("many", BGE_SMALL, L4), ns)
    wait_reason(cluster, ns, "many", "AllReplicasReady", operator)
    cluster.kubectl("scale", "modelservice", "many", "-n", ns, "--replicas=4")
    wait_for("4 ready replicas", lambda: cluster.get("modelservice", "many", "-n", ns)["status"].get("ready") == "4/4",
             timeout=60)
    assert {(a["pool"], a["device"]) for a in allocations(cluster, ns).values()} == {("gpu-l4", "gpu-0")}
    # A new share is a new template; the old one is removed.
    cluster.kubectl("patch", "modelservice", "many", "-n", ns, "--type=merge",
                    "-p", json.dumps({"spec": {"gpu": {"sharing": {"memory": "2Gi"}}}}))
    def rolled():
        templates = cluster.get("resourceclaimtemplates", "-n", ns)["items"]
        return templates if len(templates) == 1 and templates[0]["metadata"]["name"] == (
            cluster.get("modelservice", "many", "-n", ns)["status"].get("gpuShare") or {}).get("claimTemplate") else None
    wait_for("one ResourceClaimTemplate, the new share's", rolled, timeout=60)
    wait_for("the new share on every replica", lambda: sorted(
        mib(a["consumedCapacity"]["memory"]) for a in allocations(cluster, ns).values()) == [2048] * 4, timeout=90)
    # A template deleted by hand is put back by the resync (new replicas need it for their claims).
    (template,) = rolled()
    cluster.kubectl("delete", "resourceclaimtemplate", template["metadata"]["name"], "-n", ns)
    wait_for("the ResourceClaimTemplate back", rolled, timeout=30)
    cluster.kubectl("scale", "modelservice", "many", "-n", ns, "--replicas=5")
    wait_for("5 ready replicas", lambda: cluster.get("modelservice", "many", "-n", ns)["status"].get("ready") == "5/5",
             timeout=60)


@pytest.mark.parametrize("spec, field, words", [
    ({"accelerator": "cpu", "gpu": {"sharing": {"mode": "Shared"}}}, "spec.gpu.sharing.mode", "no GPU share"),
    ({"gpu": {"count": 2, "sharing": {"mode": "Shared"}}}, "spec.gpu.count", "part of one GPU"),
    ({"gpu": {"sharing": {"memory": "2Gi"}}}, "spec.gpu.sharing.mode", "only apply to mode Shared"),
])
def test_shares_the_api_refuses_name_the_field(cluster, operator, ns, spec, field, words):
    body = {"apiVersion": API, "kind": "ModelService", "metadata": {"name": "bad"},
            "spec": {"task": "embed", "model": BGE_SMALL, **spec}}
    with pytest.raises(KubectlError) as refused:
        cluster.apply(body, ns)
    assert field in str(refused.value) and words in str(refused.value)


# --- the device plugin's shared resource ----------------------------------------------------------

SHARED = "nvidia.com/gpu.shared"
MEMORY = "serving.embedding-images.io/gpu-memory-mib"


def _node_resources(cluster: Cluster, node: str, op: str, values: dict[str, str]) -> None:
    patch = [{"op": op, "path": f"/status/{part}/{name.replace('/', '~1')}", **({"value": v} if op == "add" else {})}
             for name, v in values.items() for part in ("capacity", "allocatable")]
    cluster.kubectl("patch", "node", node, "--subresource=status", "--type=json", "-p", json.dumps(patch),
                    check=op == "add")


@pytest.fixture(scope="module")
def plugin_operator(cluster: Cluster, gpu_nodes: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """An operator with --gpu-sharing=devicePlugin (namespaces gpushdp-*), and the L4 node
    advertising 8 time-slicing replicas of its GPU as the device plugin does with
    renameByDefault (nvidia.com/gpu.shared)."""
    for path in CRD_FILES:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    _node_resources(cluster, "gpu-l4", "add", {SHARED: "8"})
    op = Operator(cluster, tmp_path_factory.mktemp("operator-dp") / "operator.log", namespace="gpushdp-*",
                  env={"MODELSERVICE_GPU_SHARING": "devicePlugin"})
    op.start()
    try:
        yield op
    finally:
        op.stop()
        _node_resources(cluster, "gpu-l4", "remove", {SHARED: "", MEMORY: ""})


@pytest.fixture
def dp_ns(cluster: Cluster) -> Iterator[str]:
    name = f"gpushdp-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "modelservices", "--all", "-n", name, "--wait=true", "--timeout=60s", check=False)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_the_device_plugin_mode_packs_by_the_operators_memory_accounting(cluster, plugin_operator, dp_ns):
    op, ns = plugin_operator, dp_ns
    small = estimate_memory(BGE_SMALL, "tei").total_mib
    rerank = estimate_memory(RERANKER, "reranker").total_mib
    for i in range(6):
        cluster.apply(shared(f"bge-{i}", BGE_SMALL, L4), ns)
    cluster.apply(shared("rerank", RERANKER, L4, task="rerank"), ns)
    for name in [*(f"bge-{i}" for i in range(6)), "rerank"]:
        wait_reason(cluster, ns, name, "AllReplicasReady", op)
    node = cluster.get("node", "gpu-l4")
    assert node["status"]["allocatable"][MEMORY] == "23034"  # the L4's memory, advertised by the operator
    running = cluster.get("pods", "-n", ns)["items"]
    assert {p["spec"]["nodeName"] for p in running} == {"gpu-l4"}
    limits = sorted(int(p["spec"]["containers"][0]["resources"]["limits"][MEMORY]) for p in running)
    assert limits == sorted([small] * 6 + [rerank])
    assert all(p["spec"]["containers"][0]["resources"]["limits"][SHARED] == "1" for p in running)

    free = 23034 - sum(limits)
    cluster.apply(shared("big", "BAAI/bge-m3", L4, memory=f"{free + 512}Mi"), ns)
    pending = wait_reason(cluster, ns, "big", "Unschedulable", op)
    ready = next(c for c in pending["status"]["conditions"] if c["type"] == "Ready")
    assert f"Insufficient {MEMORY}" in ready["message"]
    cluster.kubectl("delete", "modelservice", "bge-0", "-n", ns, "--wait=true", "--timeout=60s")
    wait_reason(cluster, ns, "big", "AllReplicasReady", op)
