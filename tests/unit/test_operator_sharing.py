"""A share of one GPU per pod (spec.gpu.sharing): what the operator asks the cluster for, as a
user would read it with kubectl get -o yaml (the Deployment's pods, the ResourceClaimTemplate,
the status), and what stays as it was without the field."""
from __future__ import annotations

import copy

import pytest
import yaml

from modelservice.api.models import parse_modelservice
from modelservice.controller.status import build_status, recorded_plan
from modelservice.placement.builders import build_deployment
from modelservice.placement.estimate import estimate_memory
from modelservice.placement.plan import PlanError, build_plan, choose_gpu_nodes
from modelservice.placement.sharing import (
    GPU_MEMORY_UNKNOWN,
    GPU_SHARING_OFF,
    MEMORY_RESOURCE,
    SHARED_RESOURCE,
    SharingMechanism,
    SharingRefused,
    build_claim_template,
    memory_to_advertise,
    plan_share,
)
from modelservice.placement.builders import build_labels

from test_operator_resources import GOLDEN

NOW = "2026-12-07T06:00:00Z"
BGE = "BAAI/bge-small-en-v1.5"


def l4_node(name="gpu-l4", gpus=1, memory="23034"):
    return {"metadata": {"name": name, "labels": {
        "nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.compute.major": "8",
        "nvidia.com/gpu.compute.minor": "9", "nvidia.com/gpu.memory": memory}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}}}


def shared(model="BAAI/bge-small-en-v1.5", task="embed", name="bge", **sharing):
    return parse_modelservice({"metadata": {"name": name, "namespace": "ns", "generation": 1},
                               "spec": {"task": task, "model": model,
                                        "gpu": {"sharing": {"mode": "Shared", **sharing}}}})


def planned(ms, mechanism=SharingMechanism.DRA, nodes=None, cache_bytes=None):
    from modelservice.placement.plan import resolve_engine
    share = plan_share(ms.name, ms.spec, resolve_engine(ms.spec.task, ms.spec.model, ms.spec.engine),
                       mechanism, cache_bytes)
    return build_plan(ms.spec, nodes if nodes is not None else [l4_node()], share=share)


def pod_of(deployment):
    return deployment["spec"]["template"]["spec"]


GPU_GOLDEN = [p for p in sorted(GOLDEN.glob("*.yaml"))
              if next(yaml.safe_load_all(p.read_text()))["spec"].get("accelerator") != "cpu"]


@pytest.mark.parametrize("path", GPU_GOLDEN, ids=lambda p: p.stem)
def test_exclusive_is_what_a_spec_without_sharing_gets(path):
    body, deployment, _ = yaml.safe_load_all(path.read_text())
    explicit = copy.deepcopy(body)
    explicit["spec"].setdefault("gpu", {})["sharing"] = {"mode": "Exclusive"}
    ms = parse_modelservice(explicit)
    share = plan_share(ms.name, ms.spec, "tei", SharingMechanism.DRA)
    assert share is None
    assert build_deployment(ms, build_plan(ms.spec, None)) == deployment


def test_dra_pods_take_a_claim_and_no_whole_gpu():
    ms = shared()
    plan = planned(ms)
    pod = pod_of(build_deployment(ms, plan))
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})
    assert pod["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": plan.share.claim_template}]
    assert container["resources"]["claims"] == [{"name": "gpu"}]
    # Still pinned to the architecture its image runs on, and tolerating the GPU taint.
    assert pod["nodeSelector"] == {"nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "9"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_shared_pods_prefer_nodes_that_already_run_shares():
    """The scheduler's default scoring sees no GPU memory: the pods' preference for nodes with
    shares is what fills one node's GPUs before the next node's."""
    ms = shared()
    deployment = build_deployment(ms, planned(ms))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["serving.embedding-images.io/gpu-sharing"] == "Shared"
    assert "serving.embedding-images.io/gpu-sharing" not in deployment["spec"]["selector"]["matchLabels"]
    (term,) = pod_of(deployment)["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {
        "labelSelector": {"matchLabels": {"serving.embedding-images.io/gpu-sharing": "Shared"}},
        "namespaceSelector": {}, "topologyKey": "kubernetes.io/hostname"}
    # The user's own affinity stays, the preference is added to it.
    own = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}}
    mine = parse_modelservice({"metadata": {"name": "z", "namespace": "ns"}, "spec": {
        "task": "embed", "model": BGE, "affinity": own, "gpu": {"sharing": {"mode": "Shared"}}}})
    affinity = pod_of(build_deployment(mine, planned(mine)))["affinity"]
    assert affinity["nodeAffinity"] == own["nodeAffinity"] and "podAffinity" in affinity


def test_the_reranker_caps_its_allocator_at_its_share_less_the_cuda_context():
    rerank = shared(model="Qwen/Qwen3-Reranker-0.6B", task="rerank", name="rr")
    plan = planned(rerank)
    env = {e["name"]: e.get("value") for e in pod_of(build_deployment(rerank, plan))["containers"][0]["env"]}
    assert env["RERANKER_GPU_MEMORY_MIB"] == str(plan.share.memory_mib - 512)
    tei = shared()
    env = {e["name"] for e in pod_of(build_deployment(tei, planned(tei)))["containers"][0]["env"]}
    assert "RERANKER_GPU_MEMORY_MIB" not in env


def test_the_claim_template_asks_the_nvidia_driver_for_the_estimated_memory():
    ms = shared()
    plan = planned(ms)
    memory = f"{estimate_memory('BAAI/bge-small-en-v1.5', 'tei').total_mib}Mi"
    template = build_claim_template(ms.name, ms.namespace, build_labels(ms), plan.share)
    assert template["apiVersion"] == "resource.k8s.io/v1" and template["kind"] == "ResourceClaimTemplate"
    assert template["metadata"]["name"] == plan.share.claim_template
    assert template["metadata"]["labels"]["serving.embedding-images.io/modelservice"] == "bge"
    devices = template["spec"]["spec"]["devices"]
    (request,) = devices["requests"]
    assert request["exactly"]["deviceClassName"] == "gpu.nvidia.com"
    assert request["exactly"]["capacity"] == {"requests": {"memory": memory}}
    assert memory in request["exactly"]["selectors"][0]["cel"]["expression"]
    (config,) = devices["config"]
    assert config["opaque"]["driver"] == "gpu.nvidia.com"
    assert config["opaque"]["parameters"] == {
        "apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig",
        "sharing": {"strategy": "MPS", "mpsConfig": {"defaultPinnedDeviceMemoryLimit": memory}}}


def test_time_slicing_and_the_spec_memory_override():
    ms = shared(memory="3Gi", strategy="TimeSlicing")
    plan = planned(ms)
    assert plan.share.memory == "3072Mi" and plan.share.source == "Spec" and plan.share.estimate is None
    template = build_claim_template(ms.name, ms.namespace, {}, plan.share)
    assert template["spec"]["spec"]["devices"]["config"][0]["opaque"]["parameters"]["sharing"] == {
        "strategy": "TimeSlicing"}
    # Another share is another template (a template's spec is immutable): a rollout, not an edit.
    assert planned(shared(memory="4Gi", strategy="TimeSlicing")).share.claim_template != plan.share.claim_template


def test_the_status_shows_the_share_and_the_plan_reads_it_back():
    ms = shared()
    plan = planned(ms)
    status = build_status(ms, now=NOW, plan=plan, deployment={"status": {}})
    share = status["gpuShare"]
    assert share["memory"] == plan.share.memory and share["source"] == "Estimate"
    assert share["mechanism"] == "DRA" and share["strategy"] == "MPS"
    assert share["estimate"].startswith("weights ")
    import dataclasses
    back = recorded_plan(dataclasses.replace(ms, status=status))
    assert back == plan


def test_the_device_plugin_mode_asks_for_the_shared_resource_and_its_memory():
    ms = shared()
    plan = planned(ms, SharingMechanism.DEVICE_PLUGIN)
    pod = pod_of(build_deployment(ms, plan))
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {SHARED_RESOURCE: 1, MEMORY_RESOURCE: plan.share.memory_mib}
    assert "resourceClaims" not in pod


def test_the_memory_a_shared_gpu_node_advertises():
    plain = l4_node()
    shared_l4 = l4_node("l4-shared")
    shared_l4["status"]["allocatable"][SHARED_RESOURCE] = "8"
    h100 = l4_node("h100", gpus=8, memory="81559")
    h100["metadata"]["labels"]["nvidia.com/gpu.count"] = "8"
    h100["status"]["allocatable"] = {SHARED_RESOURCE: "64"}
    assert memory_to_advertise([plain, shared_l4, h100]) == {"l4-shared": 23034, "h100": 8 * 81559}
    shared_l4["status"]["allocatable"][MEMORY_RESOURCE] = "23034"
    assert memory_to_advertise([shared_l4]) == {}  # advertised already: nothing to write


def test_refusals_name_what_to_do():
    with pytest.raises(SharingRefused) as off:
        planned(shared(), SharingMechanism.OFF)
    assert off.value.reason == GPU_SHARING_OFF
    with pytest.raises(SharingRefused) as unknown:
        planned(shared(model="acme/private-encoder"))
    assert unknown.value.reason == GPU_MEMORY_UNKNOWN and "gpu.sharing.memory" in unknown.value.message
    # A ModelCache's bytes size a model outside the table.
    assert planned(shared(model="acme/private-encoder"), cache_bytes=200_000_000).share.source == "Estimate"


def test_planning_counts_shares_per_gpu_by_its_memory():
    one_l4 = [l4_node()]
    assert choose_gpu_nodes(one_l4, gpu_count=1, replicas=7, share_mib=3000) is not None   # 23034 // 3000 = 7
    assert choose_gpu_nodes(one_l4, gpu_count=1, replicas=8, share_mib=3000) is None
    assert choose_gpu_nodes(one_l4, gpu_count=1, replicas=2) is None                         # whole GPUs
    # A DRA node runs no device plugin: its GPUs are GFD's count.
    dra_l4 = l4_node(gpus=0)
    dra_l4["metadata"]["labels"]["nvidia.com/gpu.count"] = "2"
    assert choose_gpu_nodes([dra_l4], gpu_count=1, replicas=14, share_mib=3000) is not None
    assert choose_gpu_nodes([dra_l4], gpu_count=1, replicas=1) is None
    big = parse_modelservice({"metadata": {"name": "big", "namespace": "ns"}, "spec": {
        "task": "embed", "model": "BAAI/bge-m3", "replicas": 8, "gpu": {"sharing": {"mode": "Shared"}}}})
    with pytest.raises(PlanError, match="share"):
        planned(big)


class CacheKube:
    """The one read gpu_share makes: the ModelCache named by the spec, with its status."""

    def __init__(self, status):
        self.status = status

    def get_modelcache(self, namespace, name):
        return {"metadata": {"name": name, "namespace": namespace}, "status": self.status}


def test_a_modelcaches_bytes_size_the_share_of_its_users():
    from modelservice.controller.handlers import gpu_share
    body = {"metadata": {"name": "secret", "namespace": "ns"}, "spec": {
        "task": "embed", "model": "acme/secret-encoder", "cache": {"modelCache": "secret"},
        "gpu": {"sharing": {"mode": "Shared"}}}}
    ms = parse_modelservice(body)
    with pytest.raises(PlanError) as unknown:  # a cache with no complete revision says nothing yet
        gpu_share(CacheKube({}), ms, SharingMechanism.DRA)
    assert unknown.value.reason == GPU_MEMORY_UNKNOWN and unknown.value.retry
    small = gpu_share(CacheKube({"bytes": 200_000_000}), ms, SharingMechanism.DRA)
    large = gpu_share(CacheKube({"bytes": 2_000_000_000}), ms, SharingMechanism.DRA)
    assert small.source == "Estimate" and large.memory_mib > small.memory_mib
    assert small.estimate.startswith(f"weights {-(-200_000_000 // (1024 * 1024))} ")
