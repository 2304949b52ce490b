"""The real node of the local cluster (tests/cluster/node.sh): its settings, as `node.sh env`
prints them, and what a pod needs to run there (the node's taint toleration and selector).
Import it from tests in tests/cluster: `from real_node import RealNode`.
"""
from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane import HERE, ROOT

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

    def pod_spec(self, containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A pod spec that runs on this node only (its selector and the toleration of its taint)."""
        return {"nodeSelector": {"kubernetes.io/hostname": self.name},
                "tolerations": [{"key": self.taint_key, "operator": "Exists", "effect": "NoSchedule"}],
                "containers": containers, **extra}

    def podbin(self, name: str, *args: str, **extra: Any) -> dict[str, Any]:
        """A container of the podbin image (tests/cluster/node/podbin) running `podbin ARGS`."""
        return {"name": name, "image": self.podbin_image, "imagePullPolicy": "Never", "args": list(args),
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
                **extra}
