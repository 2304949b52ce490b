"""Real pods on the real node of the local cluster (tests/cluster/node.sh): a kubelet runs them
under containerd and runc, their readiness probes decide when they are Ready, a Service name
resolves through CoreDNS and answers through kube-proxy, a Job writes through a PersistentVolumeClaim,
its pods keep running through a kubelet restart, nothing of the node's ranges leaves through the
machine's eth0, and the tear-down leaves the host as it found it."""
from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from control_plane import ROOT, Cluster, wait_for
from real_node import NODE_SH, RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def _pod(name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def _finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    pod = cluster.get("pod", name, "-n", namespace)
    return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None


def _messages(pod: dict[str, Any]) -> dict[str, str]:
    """Each container's termination message (what podbin printed), by container name."""
    return {s["name"]: s["state"]["terminated"].get("message", "") for s in pod["status"]["containerStatuses"]}


def test_a_pod_runs_on_the_real_node_and_its_readiness_probe_decides_when_it_is_ready(
        cluster: Cluster, namespace: str, real_node: RealNode):
    # /ready answers 503 for the first 4 s of the process: only a kubelet probing it delays Ready.
    server = real_node.podbin("server", "serve", ":8080", "4s",
                              readinessProbe={"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1})
    cluster.apply(_pod("web", real_node.pod_spec([server])), namespace)
    pod = wait_for("pod web Ready on the real node",
                   lambda: (p := cluster.get("pod", "web", "-n", namespace))
                   and _condition(p, "Ready").get("status") == "True" and p, timeout=90)
    assert pod["spec"]["nodeName"] == real_node.name
    assert pod["status"]["hostIP"] == real_node.node_ip
    assert ipaddress.ip_address(pod["status"]["podIP"]) in real_node.pod_cidr
    started = _time(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    ready = _time(_condition(pod, "Ready")["lastTransitionTime"])
    assert (ready - started).total_seconds() >= 3, (started, ready)
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_a_service_name_resolves_through_coredns_and_answers_through_kube_proxy(
        cluster: Cluster, namespace: str, real_node: RealNode):
    labels = {"app": "echo"}
    server = real_node.podbin("server", "serve", ":8080",
                              ports=[{"name": "http", "containerPort": 8080}],
                              readinessProbe={"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1})
    cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo"},
                   "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                            "template": {"metadata": {"labels": labels}, "spec": real_node.pod_spec([server])}}},
                  namespace)
    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
                   "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}}, namespace)
    cluster.kubectl("rollout", "status", "deployment/echo", "-n", namespace, "--timeout=90s", timeout=100)
    name = f"echo.{namespace}.svc.cluster.local"
    client = real_node.pod_spec([real_node.podbin("lookup", "lookup", name),
                                 real_node.podbin("get", "get", f"http://{name}/", "30s")],
                                restartPolicy="Never")
    cluster.apply(_pod("client", client), namespace)
    pod = wait_for("the client pod to finish", lambda: _finished(cluster, namespace, "client"), timeout=90)
    messages = _messages(pod)
    assert pod["status"]["phase"] == "Succeeded", messages
    assert messages["lookup"] == cluster.get("service", "echo", "-n", namespace)["spec"]["clusterIP"]
    servers = {p["metadata"]["name"] for p in cluster.get("pods", "-n", namespace, "-l", "app=echo")["items"]}
    assert messages["get"] in servers  # the answer came from one of the Service's pods (their hostname)


def test_a_job_writes_through_a_persistent_volume_claim(cluster: Cluster, namespace: str, real_node: RealNode,
                                                        tmp_path: Path):
    volume_dir = tmp_path / "volume"
    volume_dir.mkdir()
    volume_dir.chmod(0o777)  # the podbin image runs as nobody
    pv = f"{namespace}-data"
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                   "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                            "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                            "claimRef": {"namespace": namespace, "name": "data"},
                            "hostPath": {"path": str(volume_dir), "type": "Directory"}}})
    try:
        cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                       "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv,
                                "resources": {"requests": {"storage": "1Gi"}}}}, namespace)
        writer = real_node.podbin("writer", "write", "/data/result", f"written in {namespace}",
                                  volumeMounts=[{"name": "data", "mountPath": "/data"}])
        spec = real_node.pod_spec([writer], restartPolicy="Never",
                                  volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}])
        cluster.apply({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "writer"},
                       "spec": {"backoffLimit": 0, "template": {"spec": spec}}}, namespace)
        job = wait_for("the Job to finish",
                       lambda: (j := cluster.get("job", "writer", "-n", namespace))
                       and (_condition(j, "Complete").get("status") == "True"
                            or _condition(j, "Failed").get("status") == "True") and j, timeout=90)
        assert _condition(job, "Complete").get("status") == "True", job["status"]
        assert cluster.get("pvc", "data", "-n", namespace)["status"]["phase"] == "Bound"
        assert (volume_dir / "result").read_text() == f"written in {namespace}"
    finally:
        # Goes once the namespace's deletion (the fixture's) has released its claim.
        cluster.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def _ready_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return wait_for(f"pod {name} Ready", lambda: (p := cluster.get("pod", name, "-n", namespace))
                    and _condition(p, "Ready").get("status") == "True" and p, timeout=90)


def test_a_kubelet_restart_keeps_the_pods_running_and_the_node_runs_new_ones(
        cluster: Cluster, namespace: str, real_node: RealNode):
    server = real_node.podbin("server", "serve", ":8080",
                              readinessProbe={"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1})
    cluster.apply(_pod("before", real_node.pod_spec([server])), namespace)
    [before] = _ready_pod(cluster, namespace, "before")["status"]["containerStatuses"]
    _node_sh("restart-kubelet")
    [after] = _ready_pod(cluster, namespace, "before")["status"]["containerStatuses"]
    assert (after["containerID"], after["restartCount"]) == (before["containerID"], 0)  # the same process
    cluster.apply(_pod("after", real_node.pod_spec([server])), namespace)
    assert _ready_pod(cluster, namespace, "after")["spec"]["nodeName"] == real_node.name


def _drop_counter(real_node: RealNode) -> int:
    out = subprocess.run(["nft", "list", "chain", "inet", real_node.nft_table, "output"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


def test_the_node_ranges_never_leave_through_eth0(real_node: RealNode):
    pod_address = str(real_node.pod_cidr.network_address + 200)
    route = subprocess.run(["ip", "route", "get", pod_address], capture_output=True, text=True, check=True).stdout
    assert f"dev {real_node.veth_host}" in route and "eth0" not in route, route
    # Even a packet forced onto eth0 (SO_BINDTODEVICE) for the pod range is dropped by the host's
    # guard before it leaves: the sender gets EPERM and the guard counts it.
    before = _drop_counter(real_node)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
        with pytest.raises(PermissionError):
            sock.sendto(b"x", (pod_address, 9))
    assert _drop_counter(real_node) == before + 1
    # The node's namespace has no default route: its pods reach the node, each other, Services and
    # the host's end of the veth, and nothing beyond.
    node_routes = subprocess.run(["ip", "-n", real_node.netns, "route"], capture_output=True, text=True,
                                 check=True).stdout
    assert "default" not in node_routes, node_routes
    outside = subprocess.run(["ip", "-n", real_node.netns, "route", "get", "203.0.113.1"],
                             capture_output=True, text=True)
    assert outside.returncode != 0 and "unreachable" in outside.stderr.lower(), outside


def _host_state() -> dict[str, str]:
    def run(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    return {
        "ip route": run("ip", "route", "show", "table", "all"),
        "ip addr": run("ip", "addr"),
        "iptables-save": "".join(l for l in run("iptables-save").splitlines(True) if not l.startswith("#")),
        "nft list ruleset": run("nft", "list", "ruleset"),
        "ip netns": run("ip", "netns", "list"),
        "sysctl": run("sysctl", "kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory"),
        "mounts": "".join(sorted(l.split()[4] + "\n" for l in Path("/proc/self/mountinfo").read_text().splitlines()
                                 if any(p in l.split()[4] for p in (".cache/cluster/node", "embedding-images-node",
                                                                    "/run/netns", "/run/containerd")))),
        "paths": " ".join(p for p in ("/var/log/containers", "/run/containerd", "/run/netns",
                                      "/run/embedding-images-node") if Path(p).exists()),
        "cgroups": " ".join(str(p) for p in Path("/sys/fs/cgroup").glob("*/embedding-images-node-*")),
    }


def _node_sh(command: str) -> None:
    done = subprocess.run([str(NODE_SH), command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_tear_down_leaves_the_host_as_it_was(cluster: Cluster, real_node: RealNode):
    """node.sh down, up, down: the second down leaves routes, addresses, firewall rules, network
    namespaces, mounts and the sysctls kubelet changes exactly as the first left them. The node is
    started again at the end for the tests that follow."""
    try:
        _node_sh("down")
        before = _host_state()
        _node_sh("up")
        running = _host_state()
        assert running["ip netns"] != before["ip netns"] and real_node.veth_host in running["ip addr"]
        pods = cluster.get("pods", "-A", "--field-selector", f"spec.nodeName={real_node.name}")["items"]
        assert pods, "CoreDNS runs on the node"
        _node_sh("down")
        after = _host_state()
        for what in before:
            assert after[what] == before[what], f"{what} differs after the tear-down"
    finally:
        _node_sh("up")
