"""Helpers for tests against a Kubernetes cluster: the `Cluster` handle the `cluster` fixture
gives (kubeconfig, env for subprocesses, kubectl), `wait_for`, and the GPU taint and toleration of
the simulated nodes. Import it from tests in tests/cluster: `from control_plane import wait_for`.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHART = ROOT / "charts" / "embedding-images"
MODELSERVICE_CRD = CHART / "crds" / "modelservices.yaml"
MODELCACHE_CRD = CHART / "crds" / "modelcaches.yaml"
CLUSTER_SH = HERE / "cluster.sh"
TOOLS_SH = HERE / "tools.sh"
BIN = ROOT / ".cache" / "bin"
STATE = ROOT / ".cache" / "cluster"
LOCAL_KUBECONFIG = STATE / "kubeconfig"
EXISTING_ENV = "EMBEDDING_IMAGES_EXISTING_CLUSTER"

# The taint GPU nodes carry (see nodes.yaml) and the toleration that matches it.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

T = TypeVar("T")


class KubectlError(AssertionError):
    """kubectl exited non-zero; carries the command, exit code and both streams."""

    def __init__(self, args: list[str], proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        super().__init__(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")


@dataclass(frozen=True)
class Cluster:
    """A reachable cluster: the kubeconfig to use and an environment for subprocesses.

    `env` has KUBECONFIG set and .cache/bin (kubectl, helm) first on PATH, so
    `subprocess.run(["helm", ...], env=cluster.env)` talks to this cluster.
    `local` is True for the control plane of tests/cluster (with its simulated nodes and pinned
    version), False for a cluster of the user's (EMBEDDING_IMAGES_EXISTING_CLUSTER=1).
    """

    kubeconfig: Path
    env: dict[str, str]
    local: bool

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs kubectl with this cluster's kubeconfig; raises KubectlError on failure if check."""
        proc = subprocess.run(["kubectl", *args], env=self.env, cwd=ROOT, input=input,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(list(args), proc)
        return proc

    def get(self, *args: str) -> dict[str, Any]:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        """kubectl apply of one object (a dict) or of YAML/JSON text."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=text)

    def apply_crds(self, *paths: Path, timeout: float = 60) -> None:
        """Server-side apply of CRD manifests (one CRD a file), then wait until each one is
        Established. (`kubectl wait --for=condition=Established` fails at once, instead of
        waiting, on a CRD the API server has not given any condition yet.)"""
        names = []
        for path in paths:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
            names.append(yaml.safe_load(Path(path).read_text())["metadata"]["name"])
        jsonpath = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
        for name in names:
            wait_for(f"CRD {name} Established",
                     lambda name=name: self.kubectl("get", "crd", name, "-o", jsonpath).stdout == "True",
                     timeout=timeout, interval=0.2)


def wait_for(what: str, probe: Callable[[], T], timeout: float = 60, interval: float = 0.5) -> T:
    """Calls probe until it returns something truthy and returns that; fails naming `what`,
    with the last value or error seen, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = probe()
            if last:
                return last  # type: ignore[return-value]
        except (KubectlError, KeyError, IndexError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
        time.sleep(interval)
