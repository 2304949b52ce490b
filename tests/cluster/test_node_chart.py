"""The chart on the real node: `helm install` with the operator and gateway images that
`make images` builds (imported into the node's containerd), both Ready by their own probes under a
real kubelet, the restricted security context enforced by runc, and the gateway answering by its
Service's DNS name from a client pod."""
from __future__ import annotations

import subprocess
import time

import pytest

from control_plane import ROOT, Cluster, wait_for
from real_node import NODE_SH, RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.helm, pytest.mark.images, pytest.mark.slow]

COMPONENTS = ("operator", "gateway")  # as the conftest's chart_images builds them


def test_helm_install_runs_the_operator_and_gateway_ready_by_their_probes_on_the_real_node(
        cluster: Cluster, namespace: str, real_node: RealNode, chart_images: dict[str, str]):
    start = time.monotonic()
    with real_node.chart_release(cluster, namespace, "node", COMPONENTS) as release:
        _check_release(cluster, namespace, release, real_node, chart_images, start)


def _check_release(cluster: Cluster, namespace: str, release: str, real_node: RealNode,
                   chart_images: dict[str, str], start: float) -> None:
    for c in COMPONENTS:
        cluster.kubectl("rollout", "status", f"deployment/{release}-embedding-images-{c}", "-n", namespace,
                        "--timeout=180s", timeout=190)
    ready_s = time.monotonic() - start
    for c in COMPONENTS:
        pods = cluster.get("pods", "-n", namespace, "-l", f"app.kubernetes.io/component={c}")["items"]
        assert pods
        for pod in pods:
            assert pod["spec"]["nodeName"] == real_node.name
            [container] = pod["spec"]["containers"]
            assert container["image"] == chart_images[c]
            assert container["readinessProbe"]["httpGet"]
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            [status] = pod["status"]["containerStatuses"]
            assert status["ready"] and status["restartCount"] == 0, status
    # The operator reached the API through the kubernetes Service (kube-proxy, then the node's socat).
    assert "kube-probe" in cluster.kubectl("logs", "-n", namespace, f"deployment/{release}-embedding-images-operator").stdout
    # A client pod reaches the gateway by its Service's DNS name.
    service = cluster.get("service", f"{release}-embedding-images-gateway", "-n", namespace)
    port = service["spec"]["ports"][0]["port"]
    url = f"http://{release}-embedding-images-gateway.{namespace}.svc.cluster.local:{port}/health"
    client = real_node.pod_spec([real_node.podbin("get", "get", url, "30s")], restartPolicy="Never")
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"}, "spec": client}, namespace)
    pod = wait_for("the client pod to finish",
                   lambda: (p := cluster.get("pod", "client", "-n", namespace))["status"].get("phase")
                   in ("Succeeded", "Failed") and p, timeout=60)
    [status] = pod["status"]["containerStatuses"]
    assert pod["status"]["phase"] == "Succeeded", status
    print(f"helm install to operator and gateway Ready on the real node: {ready_s:.1f} s")


def test_an_image_the_node_holds_with_podmans_image_id_is_not_imported_again(chart_images: dict[str, str]):
    """`node.sh import` compares podman's image id with the config digest of the node's image of
    that name: a second import of the same images copies nothing (the reranker's is minutes)."""
    for ref in chart_images.values():
        podman_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref],
                                   capture_output=True, text=True, check=True).stdout.strip()
        node_id = subprocess.run([str(NODE_SH), "image-id", ref], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.strip()
        assert node_id == podman_id, ref
    again = subprocess.run([str(NODE_SH), "import", *chart_images.values()], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    for ref in chart_images.values():
        assert f"{ref}: the node holds this image already" in again.stderr
    assert "imported" not in again.stderr
