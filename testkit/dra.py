"""What the NVIDIA DRA driver publishes for a node's GPUs, built from the node's GPU Feature
Discovery labels, for simulated nodes that run no driver (tests and benchmarks on the local
control plane).

The driver (github.com/NVIDIA/k8s-dra-driver-gpu) installs the DeviceClass ``gpu.nvidia.com``
(selecting its devices of type ``gpu``) and, per node, a ResourceSlice of driver ``gpu.nvidia.com``
with one device per GPU named ``gpu-<minor>``, whose attributes include ``type``, ``uuid``,
``productName``, ``brand``, ``architecture``, ``cudaComputeCapability`` and ``driverVersion``,
and whose capacity ``memory`` is the GPU's memory in bytes (its kubelet plugin's deviceinfo.go,
`GetDevice`). What this module adds: ``allowMultipleAllocations: true`` on each device, so that
several claims may take parts of its ``memory`` capacity (KEP-5075, DRAConsumableCapacity).
The released driver does not publish that yet; this is the shape the kube-scheduler packs by.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

DRIVER = "gpu.nvidia.com"
DRIVER_VERSION = "580.95.5"
CUDA_DRIVER_VERSION = "13.0.0"

# GFD's nvidia.com/gpu.family -> NVML's architecture name, as the driver's attribute spells it.
ARCHITECTURES = {"turing": "Turing", "ampere": "Ampere", "ada-lovelace": "Ada Lovelace",
                 "hopper": "Hopper", "blackwell": "Blackwell"}


def device_class() -> dict[str, Any]:
    """The DeviceClass the driver's chart installs."""
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": DRIVER},
            "spec": {"selectors": [{"cel": {"expression": (
                f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'gpu'")}}]}}


def resource_slice(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ResourceSlice of a node's GPUs (None for a node without GPU labels)."""
    labels = node["metadata"].get("labels") or {}
    if labels.get("nvidia.com/gpu.present") != "true":
        return None
    name = node["metadata"]["name"]
    count = int(labels.get("nvidia.com/gpu.count", "1"))
    memory_mib = int(labels["nvidia.com/gpu.memory"])
    product = labels["nvidia.com/gpu.product"].replace("-", " ")
    capability = f"{labels['nvidia.com/gpu.compute.major']}.{labels['nvidia.com/gpu.compute.minor']}.0"
    devices = []
    for minor in range(count):
        devices.append({
            "name": f"gpu-{minor}",
            "allowMultipleAllocations": True,
            "attributes": {
                "type": {"string": "gpu"},
                "uuid": {"string": f"GPU-{name}-{minor}"},
                "productName": {"string": product},
                "brand": {"string": "Nvidia"},
                "architecture": {"string": ARCHITECTURES.get(labels.get("nvidia.com/gpu.family", ""), "")},
                "cudaComputeCapability": {"version": capability},
                "driverVersion": {"version": DRIVER_VERSION},
                "cudaDriverVersion": {"version": CUDA_DRIVER_VERSION},
            },
            "capacity": {"memory": {"value": f"{memory_mib}Mi"}},
        })
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": f"{name}-{DRIVER}"},
            "spec": {"driver": DRIVER, "nodeName": name,
                     "pool": {"name": name, "generation": 1, "resourceSliceCount": 1},
                     "devices": devices}}


def published(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The DeviceClass and every GPU node's ResourceSlice."""
    slices = [s for s in (resource_slice(n) for n in nodes) if s is not None]
    return [device_class(), *slices]
