"""The real node of the local cluster (tests/cluster/node.sh): its settings, as `node.sh env`
prints them, and what a pod needs to run there (the node's taint toleration and selector).
Import it from tests in tests/cluster: `from real_node import RealNode`.
"""
from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from control_plane import CHART, HERE, ROOT, Cluster

NODE_SH = HERE / "node.sh"


@dataclass(frozen=True)
class RealNode:
    """The node's name, its taint, its images and its network (see node.sh's header)."""

    name: str
    taint_key: str
    dns_ip: str
    podbin_image: str
    pause_image: str
    netns: str
    veth_host: str
    host_ip: str
    node_ip: str
    pod_cidr: ipaddress.IPv4Network
    nft_table: str
    state: Path

    @classmethod
    def read(cls) -> "RealNode":
        out = subprocess.run([str(NODE_SH), "env"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return cls(name=env["NODE_NAME"], taint_key=env["TAINT_KEY"], dns_ip=env["DNS_IP"],
                   podbin_image=env["PODBIN_IMAGE"],
                   pause_image=env["PAUSE_IMAGE"], netns=env["NETNS"], veth_host=env["VETH_HOST"],
                   host_ip=env["HOST_IP"], node_ip=env["NODE_IP"],
                   pod_cidr=ipaddress.ip_network(env["POD_CIDR"]), nft_table=env["NFT_TABLE"],
                   state=Path(env["STATE"]))

    def placement(self) -> dict[str, Any]:
        """What puts a pod, a ModelService or a chart component on this node only: its node
        selector and the toleration of its taint."""
        return {"nodeSelector": {"kubernetes.io/hostname": self.name},
                "tolerations": [{"key": self.taint_key, "operator": "Exists", "effect": "NoSchedule"}]}

    def pod_spec(self, containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A pod spec that runs on this node only (its selector and the toleration of its taint)."""
        return {**self.placement(), "containers": containers, **extra}

    def chart_values(self, cluster: Cluster, components: Iterable[str],
                     extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """Helm values that run the chart's `components` (operator, gateway) on this node from the
        images imported into it (pull policy Never) and no model Deployment of the chart's own;
        `extra` adds values per component. The CRDs are the chart's unless another release of
        the session installed them already (helm keeps them): then not this one's."""
        crds_exist = cluster.kubectl("get", "crd", "modelservices.serving.embedding-images.io",
                                     check=False).returncode == 0
        return {"crds": {"enabled": not crds_exist}, "embedding": {"enabled": False},
                "reranker": {"enabled": False},
                **{c: {"image": {"pullPolicy": "Never"}, **self.placement(), **(extra or {}).get(c, {})}
                   for c in components}}

    @contextlib.contextmanager
    def chart_release(self, cluster: Cluster, namespace: str, prefix: str, components: Iterable[str],
                      extra: Mapping[str, Mapping[str, Any]] | None = None) -> Iterator[str]:
        """`helm install` of the chart in `namespace` with chart_values(cluster, components,
        extra), as release `<prefix>-<the namespace's last 6 characters>` (its cluster-scoped RBAC
        objects are named after it); yields the release's name. On the way out, the namespace's
        ModelServices and ModelCaches are deleted first, while the operator still runs to see
        them go, then the release is uninstalled."""
        name = f"{prefix}-{namespace[-6:]}"
        helm = ["helm", "-n", namespace]
        values = self.chart_values(cluster, components, extra)
        install = subprocess.run([*helm, "install", name, str(CHART), "-f", "-"], input=yaml.safe_dump(values),
                                 env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        try:
            assert install.returncode == 0, install.stderr
            yield name
        finally:
            cluster.kubectl("delete", "modelservices,modelcaches", "--all", "-n", namespace, "--wait=true",
                            "--timeout=90s", check=False, timeout=120)
            subprocess.run([*helm, "uninstall", name, "--ignore-not-found"], env=cluster.env, capture_output=True,
                           timeout=120)

    def podbin(self, name: str, *args: str, **extra: Any) -> dict[str, Any]:
        """A container of the podbin image (tests/cluster/node/podbin) running `podbin ARGS`."""
        return {"name": name, "image": self.podbin_image, "imagePullPolicy": "Never", "args": list(args),
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
                **extra}
