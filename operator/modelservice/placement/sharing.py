"""A share of one GPU for each pod of a ModelService (`spec.gpu.sharing.mode: Shared`), built purely.

How a cluster shares GPUs is the operator's setting (`--gpu-sharing`, chart `operator.gpuSharing`):

* ``dra`` (default): Dynamic Resource Allocation, resource.k8s.io/v1. Each pod gets its own
  ResourceClaim from a ResourceClaimTemplate the operator makes for the ModelService (a child,
  named ``<name>-gpu-<hash of the share>``: a template's spec is immutable, so a new share is a new
  template and a rollout). The claim asks the DeviceClass ``gpu.nvidia.com`` (installed by the
  NVIDIA DRA driver, github.com/NVIDIA/k8s-dra-driver-gpu) for one device with *consumable
  capacity*: ``capacity.requests.memory`` is the pod's share, and the kube-scheduler allocates it
  from a GPU whose ResourceSlice device allows multiple allocations and still has that much of its
  ``memory`` capacity unallocated (KEP-5075, feature gate ``DRAConsumableCapacity``: alpha in
  Kubernetes 1.34 and 1.35, beta from 1.36). A CEL selector also requires the device's whole
  memory to hold the share. The driver's opaque ``GpuConfig`` (apiVersion
  ``resource.nvidia.com/v1beta1``, ``sharing.strategy`` ``MPS`` with
  ``mpsConfig.defaultPinnedDeviceMemoryLimit`` = the share, or ``TimeSlicing``; field names from
  api/nvidia.com/resource/v1beta1/sharing.go of that repository) tells the driver how the pods on
  one GPU share it.

  Why consumable capacity rather than one ResourceClaim that several pods reference: with a shared
  claim, someone must decide which pods join which claim, i.e. pack replicas onto GPUs, which is a
  scheduler of our own that races the real one. With a claim per pod and a capacity request, the
  kube-scheduler packs (it only places a pod where a device has room, retries Pending pods when
  a share is freed, and says why in the pod's PodScheduled condition), autoscaling adds a replica
  exactly like any pod, and nothing in the operator counts memory.

* ``devicePlugin``: the classic device plugin's shared resource (``nvidia.com/gpu.shared``,
  time-slicing or MPS replicas of each GPU, ``renameByDefault: true``): each pod requests one unit
  of it. The plugin's replicas carry no memory, so the operator keeps the memory accounting per
  GPU node in a second extended resource, ``MEMORY_RESOURCE`` (MiB): it advertises on every node
  that offers ``nvidia.com/gpu.shared`` its GPUs' memory (GFD's ``nvidia.com/gpu.memory`` x
  ``nvidia.com/gpu.count``) as that resource's capacity, and each pod requests its share of it,
  so the kube-scheduler packs by memory per node here too. Per node, not per GPU: on a node of
  several GPUs the plugin hands out replicas without regard to memory, so the shares of one
  node may not split across its GPUs as they would fit.

* ``off``: a ModelService asking for a share is refused (reason ``GPUSharingOff``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Mapping

from kubernetes.utils import parse_quantity

from ..api.models import ModelServiceSpec
from .estimate import CUDA_CONTEXT_MIB, MIB, estimate_memory

# The NVIDIA DRA driver's names (k8s-dra-driver-gpu): its driver and DeviceClass, the opaque
# config's API and kind, and the memory capacity its ResourceSlices publish per GPU device.
DRA_DRIVER = "gpu.nvidia.com"
DRA_DEVICE_CLASS = "gpu.nvidia.com"
GPU_CONFIG_API = "resource.nvidia.com/v1beta1"
GPU_CONFIG_KIND = "GpuConfig"
DEFAULT_STRATEGY = "MPS"
CLAIM_NAME = "gpu"                       # the pod's name of its claim, and the claim's request
SHARED_RESOURCE = "nvidia.com/gpu.shared"
# The label of pods that share GPUs, and their preference for nodes that already run such pods:
# the kube-scheduler's default scoring (NodeResourcesFit on CPU and memory) sees nothing of GPU
# memory, and on nodes as large as GPU nodes it scores them all alike, so pods would land on any
# node with room and start a new GPU there. Preferring nodes with shares fills one node's GPUs
# (first fit, device by device, within a node) before opening the next node's.
SHARE_LABEL = "serving.embedding-images.io/gpu-sharing"
PACKING_WEIGHT = 100
MEMORY_RESOURCE = "serving.embedding-images.io/gpu-memory-mib"  # devicePlugin: GPU memory, MiB
LABEL_MEMORY = "nvidia.com/gpu.memory"
LABEL_COUNT = "nvidia.com/gpu.count"


class SharingMechanism(str, Enum):
    """How the operator requests a GPU share (its --gpu-sharing setting)."""

    DRA = "dra"
    DEVICE_PLUGIN = "devicePlugin"
    OFF = "off"


@dataclass(frozen=True)
class GpuShare:
    """What each pod of a sharing ModelService takes: `memory_mib` of one GPU, asked for through
    `mechanism` (DRA: a claim from `claim_template` with `strategy`)."""

    memory_mib: int
    source: str                      # Spec | Estimate
    mechanism: str                   # DRA | DevicePlugin
    estimate: str | None = None      # the estimate's terms, when it is one
    strategy: str | None = None      # DRA: MPS | TimeSlicing
    claim_template: str | None = None

    @property
    def memory(self) -> str:
        return f"{self.memory_mib}Mi"

    def as_status(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"memory": self.memory, "source": self.source, "mechanism": self.mechanism}
        if self.estimate:
            fields["estimate"] = self.estimate
        if self.strategy:
            fields["strategy"] = self.strategy
        if self.claim_template:
            fields["claimTemplate"] = self.claim_template
        return fields

    @classmethod
    def from_status(cls, fields: Mapping[str, Any] | None) -> "GpuShare | None":
        if not fields:
            return None
        return cls(memory_mib=int(parse_quantity(fields["memory"]) // MIB), source=fields["source"],
                   mechanism=fields["mechanism"], estimate=fields.get("estimate"),
                   strategy=fields.get("strategy"), claim_template=fields.get("claimTemplate"))


class SharingRefused(ValueError):
    """The share cannot be planned: `reason` for the Ready condition."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


GPU_MEMORY_UNKNOWN = "GPUMemoryUnknown"
GPU_SHARING_OFF = "GPUSharingOff"


def wants_share(spec: ModelServiceSpec) -> bool:
    return spec.gpu is not None and spec.gpu.sharing is not None and spec.gpu.sharing.shared


def claim_template_name(name: str, memory_mib: int, strategy: str) -> str:
    """<name>-gpu-<8 hex of the share>: a template's spec is immutable, so another share is
    another template (at most 63 - 13 characters of the name are kept)."""
    digest = hashlib.sha256(json.dumps([memory_mib, strategy]).encode()).hexdigest()[:8]
    return f"{name[:50].rstrip('-')}-gpu-{digest}"


def plan_share(name: str, spec: ModelServiceSpec, engine: str, mechanism: SharingMechanism,
               cache_bytes: int | None = None) -> GpuShare | None:
    """The share each pod of a GPU ModelService takes, or None for whole GPUs. Raises
    SharingRefused (sharing off, or a model of unknown size without gpu.sharing.memory)."""
    if not wants_share(spec):
        return None
    sharing = spec.gpu.sharing  # type: ignore[union-attr]
    if mechanism is SharingMechanism.OFF:
        raise SharingRefused(GPU_SHARING_OFF, "gpu.sharing.mode Shared, but this operator runs with "
                             "--gpu-sharing=off (chart operator.gpuSharing): ask the platform team to "
                             "turn on dra or devicePlugin, or remove gpu.sharing")
    if sharing.memory is not None:
        memory_mib = -(-int(parse_quantity(sharing.memory)) // MIB)
        source, described = "Spec", None
    else:
        ea = spec.engine_args
        try:
            est = estimate_memory(
                spec.model, engine, dtype=ea.dtype if ea else None,
                max_batch_tokens=ea.max_batch_tokens if ea else None,
                max_length=ea.max_length if ea else None,
                prompt_cache_tokens=ea.prompt_cache_tokens if ea else None, cache_bytes=cache_bytes)
        except LookupError as exc:
            raise SharingRefused(GPU_MEMORY_UNKNOWN, str(exc)) from None
        memory_mib, source, described = est.total_mib, "Estimate", est.describe()
    if mechanism is SharingMechanism.DEVICE_PLUGIN:
        return GpuShare(memory_mib, source, "DevicePlugin", described)
    strategy = sharing.strategy or DEFAULT_STRATEGY
    return GpuShare(memory_mib, source, "DRA", described, strategy,
                    claim_template_name(name, memory_mib, strategy))


def gpu_config(share: GpuShare) -> dict[str, Any]:
    """The NVIDIA DRA driver's opaque GpuConfig of a share: MPS caps each client's device memory
    at the share (defaultPinnedDeviceMemoryLimit); time-slicing caps nothing."""
    if share.strategy == "TimeSlicing":
        sharing: dict[str, Any] = {"strategy": "TimeSlicing"}
    else:
        sharing = {"strategy": "MPS", "mpsConfig": {"defaultPinnedDeviceMemoryLimit": share.memory}}
    return {"apiVersion": GPU_CONFIG_API, "kind": GPU_CONFIG_KIND, "sharing": sharing}


def build_claim_template(name: str, namespace: str | None, labels: Mapping[str, str],
                         share: GpuShare) -> dict[str, Any]:
    """The ResourceClaimTemplate each pod's claim is made from (DRA mechanism)."""
    assert share.claim_template is not None
    metadata: dict[str, Any] = {"name": share.claim_template, "labels": dict(labels)}
    if namespace:
        metadata["namespace"] = namespace
    request = {
        "name": CLAIM_NAME,
        "exactly": {
            "deviceClassName": DRA_DEVICE_CLASS,
            "allocationMode": "ExactCount",
            "count": 1,
            "selectors": [{"cel": {"expression": (
                f"device.capacity['{DRA_DRIVER}'].memory.compareTo(quantity('{share.memory}')) >= 0")}}],
            "capacity": {"requests": {"memory": share.memory}},
        },
    }
    config = [{"requests": [CLAIM_NAME], "opaque": {"driver": DRA_DRIVER, "parameters": gpu_config(share)}}]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": metadata,
        "spec": {"metadata": {"labels": dict(labels)},
                 "spec": {"devices": {"requests": [request], "config": config}}},
    }


def share_labels(share: GpuShare | None) -> dict[str, str]:
    """The labels of the pods of a share (none for whole GPUs)."""
    return {SHARE_LABEL: "Shared"} if share is not None else {}


def share_env(share: GpuShare | None, engine: str) -> list[dict[str, str]]:
    """The engine's own cap from the share: the reranker's allocator may hold the share less the
    CUDA context (RERANKER_GPU_MEMORY_MIB); TEI has no such setting."""
    if share is None or engine != "reranker":
        return []
    return [{"name": "RERANKER_GPU_MEMORY_MIB", "value": str(max(share.memory_mib - CUDA_CONTEXT_MIB, 256))}]


def share_pod(pod: dict[str, Any], share: GpuShare) -> None:
    """Gives a pod spec (its one container) its share instead of whole GPUs: a claim from the
    template (DRA), or one unit of the device plugin's shared resource."""
    container = pod["containers"][0]
    resources = container.setdefault("resources", {})
    preferred = (pod.setdefault("affinity", {}).setdefault("podAffinity", {})
                 .setdefault("preferredDuringSchedulingIgnoredDuringExecution", []))
    preferred.append({"weight": PACKING_WEIGHT, "podAffinityTerm": {
        "labelSelector": {"matchLabels": {SHARE_LABEL: "Shared"}},
        "namespaceSelector": {},          # shares of every namespace
        "topologyKey": "kubernetes.io/hostname"}})
    if share.mechanism == "DRA":
        pod["resourceClaims"] = [{"name": CLAIM_NAME, "resourceClaimTemplateName": share.claim_template}]
        resources["claims"] = [{"name": CLAIM_NAME}]
    else:
        limits = resources.setdefault("limits", {})
        limits[SHARED_RESOURCE] = 1
        limits[MEMORY_RESOURCE] = share.memory_mib


def node_memory_mib(node: Mapping[str, Any]) -> int | None:
    """The GPU memory (MiB) a node offers to device-plugin shares: its GPUs' memory (GFD labels)
    when it advertises the shared resource, else None."""
    labels = node.get("metadata", {}).get("labels") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    memory, count = labels.get(LABEL_MEMORY, ""), labels.get(LABEL_COUNT, "1")
    if str(allocatable.get(SHARED_RESOURCE, "0")) in ("", "0") or not memory.isdigit() or not count.isdigit():
        return None
    return int(memory) * int(count)


def memory_to_advertise(nodes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Nodes whose advertised MEMORY_RESOURCE capacity is missing or differs from what their GPUs
    hold: name -> MiB."""
    out = {}
    for node in nodes:
        want = node_memory_mib(node)
        have = ((node.get("status") or {}).get("allocatable") or {}).get(MEMORY_RESOURCE)
        if want is not None and str(have) != str(want):
            out[node["metadata"]["name"]] = want
    return out
