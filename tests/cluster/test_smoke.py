"""The control plane is real: the scheduler honours node selectors, taints and GPU capacity,
controllers roll out Deployments and fill EndpointSlices, RBAC refuses a ServiceAccount it grants
nothing, TLS and service-account tokens work, and the apiserver is the pinned release."""
from __future__ import annotations

import base64
import ipaddress
import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from control_plane import CLUSTER_SH, GPU_TAINT, GPU_TOLERATION, HERE, STATE, Cluster, wait_for
from real_node import NODE_SH, RealNode

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"

# The simulated GPU nodes as the issue specifies them: GPU Feature Discovery labels and count.
GPU_NODES = {
    "gpu-t4": ("Tesla-T4", "turing", "7", "5", 1),
    "gpu-a10": ("NVIDIA-A10", "ampere", "8", "6", 1),
    "gpu-a100": ("NVIDIA-A100-SXM4-80GB", "ampere", "8", "0", 1),
    "gpu-l4": ("NVIDIA-L4", "ada-lovelace", "8", "9", 1),
    "gpu-h100": (H100, "hopper", "9", "0", 8),
}


def gpu_pod_spec(gpus: int, tolerate: bool, node_selector: dict[str, str] | None = None) -> dict:
    spec: dict = {
        "containers": [{
            "name": "server",
            "image": "registry.invalid/server:1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
        }],
    }
    if tolerate:
        spec["tolerations"] = [GPU_TOLERATION]
    if node_selector:
        spec["nodeSelector"] = node_selector
    return spec


def failed_scheduling_message(cluster: Cluster, namespace: str, pod: str) -> str:
    events = cluster.get("events", "-n", namespace,
                         "--field-selector", f"involvedObject.name={pod},reason=FailedScheduling")
    return " ".join(e.get("message", "") for e in events["items"])


def test_apiserver_reports_the_pinned_release(cluster: Cluster):
    if not cluster.local:
        pytest.skip("the pinned release is a property of the local control plane")
    go_mod = (HERE / "modules" / "k8s" / "go.mod").read_text()
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", go_mod, re.M).group(1)
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"] == pinned
    major, minor = pinned.lstrip("v").split(".")[:2]
    assert (server["major"], server["minor"]) == (major, minor)


def test_a_second_up_while_running_changes_nothing(cluster: Cluster):
    if not cluster.local:
        pytest.skip("cluster.sh manages the local control plane only")
    pid_file = STATE / "kwok" / "clusters" / "embedding-images" / "pids" / "kube-apiserver.pid"
    pid = pid_file.read_text()
    up = subprocess.run([str(CLUSTER_SH), "up"], capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    assert "already running" in up.stderr
    assert pid_file.read_text() == pid
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"


def test_every_node_is_ready(cluster: Cluster):
    nodes = cluster.get("nodes")["items"]
    if cluster.local:
        real = [RealNode.read().name] if subprocess.run([str(NODE_SH), "status"], capture_output=True).returncode == 0 else []
        assert sorted(n["metadata"]["name"] for n in nodes) == sorted(["cpu-1", "cpu-2", *GPU_NODES, *real])
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}.get("Ready")
        assert ready == "True", f"node {node['metadata']['name']} is not Ready"


@pytest.mark.parametrize("name", sorted(GPU_NODES))
def test_gpu_node_has_the_feature_discovery_labels_capacity_and_taint(cluster: Cluster, gpu_nodes, name):
    if name not in gpu_nodes and not cluster.local:
        pytest.skip(f"no node {name} in this cluster")
    product, family, major, minor, count = GPU_NODES[name]
    node = gpu_nodes[name]
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["nvidia.com/gpu.product"] == product
    assert labels["nvidia.com/gpu.family"] == family
    assert (labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]) == (major, minor)
    assert labels["nvidia.com/gpu.count"] == str(count)
    assert int(labels["nvidia.com/gpu.memory"]) >= 15000  # MiB, as GFD reports it
    assert node["status"]["capacity"]["nvidia.com/gpu"] == str(count)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(count)
    assert GPU_TAINT in node["spec"]["taints"]


def test_cpu_nodes_have_no_gpus_no_taint_and_real_capacity(cluster: Cluster):
    if not cluster.local:
        pytest.skip("the CPU nodes are those of the local control plane")
    for name in ("cpu-1", "cpu-2"):
        node = cluster.get("node", name)
        assert "nvidia.com/gpu" not in node["status"]["capacity"]
        assert not any(k.startswith("nvidia.com/") for k in node["metadata"]["labels"])
        assert not node["spec"].get("taints")
        assert node["status"]["allocatable"]["cpu"] == "16"
        assert node["status"]["allocatable"]["memory"] == "64Gi"


def test_gpu_deployment_becomes_ready_on_the_h100_node_and_its_service_gets_endpoints(
        cluster: Cluster, namespace: str, gpu_nodes):
    h100_nodes = [n for n, node in gpu_nodes.items()
                  if node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100]
    if not h100_nodes and not cluster.local:
        pytest.skip(f"no node labelled nvidia.com/gpu.product={H100} in this cluster")
    labels = {"app": "embed"}
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "embed"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": gpu_pod_spec(1, tolerate=True,
                                              node_selector={"nvidia.com/gpu.product": H100})},
        },
    }, namespace)
    cluster.apply({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "embed"},
        "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": "http"}]},
    }, namespace)

    cluster.kubectl("rollout", "status", "deployment/embed", "-n", namespace, "--timeout=90s", timeout=120)
    pods = cluster.get("pods", "-n", namespace, "-l", "app=embed")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] in h100_nodes
        assert pod["status"]["phase"] == "Running"
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
        assert pod["status"].get("podIP")
        pod_cidr = gpu_nodes[pod["spec"]["nodeName"]]["spec"].get("podCIDR")
        if pod_cidr:
            assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(pod_cidr)
    pod_ips = sorted(p["status"]["podIP"] for p in pods)

    def ready_endpoint_ips():
        slices = cluster.get("endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=embed")
        ips = sorted(addr for s in slices["items"] for ep in (s.get("endpoints") or [])
                     if ep.get("conditions", {}).get("ready") for addr in ep["addresses"])
        return ips if ips == pod_ips else None

    wait_for("the Service's EndpointSlice to list both pods as ready", ready_endpoint_ips, timeout=60)
    port = cluster.get("endpointslices", "-n", namespace,
                       "-l", "kubernetes.io/service-name=embed")["items"][0]["ports"][0]["port"]
    assert port == 8080


def test_gpu_pod_without_the_toleration_stays_pending(cluster: Cluster, namespace: str, gpu_nodes):
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-toleration"},
                   "spec": gpu_pod_spec(1, tolerate=False)}, namespace)
    message = wait_for("a FailedScheduling event for the pod",
                       lambda: failed_scheduling_message(cluster, namespace, "no-toleration"))
    assert "untolerated taint" in message and "nvidia.com/gpu" in message, message
    pod = cluster.get("pod", "no-toleration", "-n", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(cluster: Cluster, namespace: str,
                                                                   gpu_nodes):
    most = max(int(n["status"]["allocatable"]["nvidia.com/gpu"]) for n in gpu_nodes.values())
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "too-many-gpus"},
                   "spec": gpu_pod_spec(most + 1, tolerate=True)}, namespace)
    message = wait_for("a FailedScheduling event for the pod",
                       lambda: failed_scheduling_message(cluster, namespace, "too-many-gpus"))
    assert "Insufficient nvidia.com/gpu" in message, message
    assert not cluster.get("pod", "too-many-gpus", "-n", namespace)["spec"].get("nodeName")


def _api_request(server: str, ca: ssl.SSLContext, token: str, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(server + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ca, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _server_and_tls(cluster: Cluster) -> tuple[str, ssl.SSLContext]:
    """The API server URL of the current context and a TLS context that trusts only its CA."""
    config = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    entry = config["clusters"][0]["cluster"]
    assert entry["server"].startswith("https://"), "the API server must be served over TLS"
    if "certificate-authority-data" in entry:
        ca_pem = base64.b64decode(entry["certificate-authority-data"]).decode()
    else:
        ca_pem = Path(entry["certificate-authority"]).read_text()
    return entry["server"], ssl.create_default_context(cadata=ca_pem)


def test_serviceaccount_without_rbac_is_refused_with_403_until_a_role_grants_it(
        cluster: Cluster, namespace: str):
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = cluster.kubectl("create", "token", "reader", "-n", namespace, "--duration=10m").stdout.strip()
    server, tls = _server_and_tls(cluster)
    path = f"/api/v1/namespaces/{namespace}/pods"

    status, body = _api_request(server, tls, token, path)
    assert status == 403, body
    assert body["reason"] == "Forbidden"
    assert f"system:serviceaccount:{namespace}:reader" in body["message"]

    status, body = _api_request(server, tls, "not-a-token", path)
    assert status == 401, body

    cluster.kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "reader", "--role=pod-reader",
                    f"--serviceaccount={namespace}:reader", "-n", namespace)
    status, body = wait_for("the RoleBinding to take effect",
                            lambda: (lambda r: r if r[0] == 200 else None)(_api_request(server, tls, token, path)))
    assert body["kind"] == "PodList"
    status, body = _api_request(server, tls, token, f"/api/v1/namespaces/{namespace}/secrets")
    assert status == 403, "the Role grants pods only"
