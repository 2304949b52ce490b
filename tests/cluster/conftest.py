"""The Kubernetes cluster for the tests of tests/cluster.

By default the tests run against the local control plane of tests/cluster/cluster.sh: a real
kube-apiserver, kube-controller-manager, kube-scheduler and etcd (built once from the Go module
proxy and cached in .cache/cluster), with simulated kwok nodes (tests/cluster/nodes.yaml). The
session fixture `cluster` starts it when it is not running and then stops it again at the end of
the session, so no process is left behind; a cluster started beforehand (`make cluster-up`) is
used as it is and left running.

To run the same tests against a cluster of your own (kind, or any cluster you may write to):

    EMBEDDING_IMAGES_EXISTING_CLUSTER=1 KUBECONFIG=~/.kube/config .venv/bin/pytest -m cluster

Nothing is built or started then. Tests that need the simulated GPU nodes (the `gpu_nodes`
fixture) are skipped on a cluster that has none.

The local cluster also has one real node (tests/cluster/node.sh: kubelet, kube-proxy, containerd
and CoreDNS in a network namespace of their own), tainted so that only pods that ask for it run
there; the tests marked `node` use it (`real_node` fixture) and are skipped on a cluster of your
own.

Fixtures for other test modules: `cluster` (session: kubeconfig, env, `kubectl(...)`),
`namespace` (a fresh namespace per test, deleted afterwards), `gpu_nodes`, `real_node` and
`chart_images` (the operator and gateway images of this checkout in the real node's containerd).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from control_plane import (BIN, CHART, CLUSTER_SH, EXISTING_ENV, LOCAL_KUBECONFIG, ROOT, STATE, TOOLS_SH,
                           Cluster, wait_for)
from real_node import NODE_SH, RealNode


def _tool_env(kubeconfig: Path) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _wants_existing_cluster() -> bool:
    return os.environ.get(EXISTING_ENV, "").strip().lower() in {"1", "true", "yes"}


def _local_cluster_running() -> bool:
    return subprocess.run([str(CLUSTER_SH), "status"], cwd=ROOT, capture_output=True).returncode == 0


_session_start = time.time()
_timings: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    """Reports the cold build (when this session built the binaries) and the start of the cluster."""
    for stamp in STATE.glob("bin-*/.build-seconds"):
        if stamp.stat().st_mtime >= _session_start:
            terminalreporter.write_line(f"control plane: cold build took {stamp.read_text().strip()} s "
                                        f"({stamp.parent.name})")
    if "up" in _timings:
        terminalreporter.write_line(f"control plane: cluster.sh up took {_timings['up']:.1f} s")


# A cold build takes many minutes; start it (niced) as soon as collection shows that cluster tests
# will run, so that it overlaps with the tests that run before them. `cluster.sh up` waits for it.
_background_build: subprocess.Popen | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _background_build
    if _wants_existing_cluster() or session.config.option.collectonly:
        return
    if not any(item.get_closest_marker("cluster") for item in session.items):
        return
    # The real node's build (kubelet, kube-proxy, CoreDNS, its images) starts with the control plane's.
    builder = CLUSTER_SH if os.environ.get("EMBEDDING_IMAGES_NODE", "1") == "0" else NODE_SH
    if subprocess.run([str(builder), "built"], cwd=ROOT, capture_output=True).returncode == 0:
        return
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "build.log", "ab") as log:
        _background_build = subprocess.Popen(["nice", str(builder), "build"], cwd=ROOT, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stops a background build still running when the session ends early (nothing left behind)."""
    if _background_build is not None and _background_build.poll() is None:
        os.killpg(_background_build.pid, signal.SIGTERM)
        _background_build.wait(timeout=30)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The cluster of this test session (see the module docstring)."""
    subprocess.run([str(TOOLS_SH)], cwd=ROOT, check=True)
    if _wants_existing_cluster():
        first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        kubeconfig = Path(first or Path.home() / ".kube" / "config").expanduser()
        if not kubeconfig.is_file():
            pytest.fail(f"{EXISTING_ENV} is set but the kubeconfig {kubeconfig} does not exist; "
                        "point KUBECONFIG at your cluster's kubeconfig")
        c = Cluster(kubeconfig=kubeconfig, env=_tool_env(kubeconfig), local=False)
        c.kubectl("version", timeout=30)  # fails here, clearly, if the cluster is unreachable
        yield c
        return

    started_here = not _local_cluster_running()
    if started_here:
        start = time.monotonic()
        up = subprocess.run([str(CLUSTER_SH), "up"], cwd=ROOT)
        _timings["up"] = time.monotonic() - start
        if up.returncode != 0:
            subprocess.run([str(CLUSTER_SH), "down"], cwd=ROOT)
            pytest.fail("tests/cluster/cluster.sh up failed; its message above names the piece and its log")
    try:
        yield Cluster(kubeconfig=LOCAL_KUBECONFIG, env=_tool_env(LOCAL_KUBECONFIG), local=True)
    finally:
        if started_here:
            subprocess.run([str(CLUSTER_SH), "down"], cwd=ROOT, check=True)


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"{stem}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted (without waiting) when the test ends.

    Waits for its `default` ServiceAccount, which the controller-manager creates and pods need."""
    name = _namespace_name(request.node.name)
    cluster.kubectl("create", "namespace", name)
    wait_for(f"the default ServiceAccount in {name}",
             lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def gpu_nodes(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """The nodes with NVIDIA GPUs by name (those labelled nvidia.com/gpu.present=true).

    Skips on a user's cluster without them; on the local control plane they must exist."""
    nodes = cluster.get("nodes", "-l", "nvidia.com/gpu.present=true")["items"]
    if not nodes:
        if cluster.local:
            pytest.fail("the local control plane has no GPU nodes: cluster.sh up did not apply nodes.yaml")
        pytest.skip("the existing cluster has no nodes labelled nvidia.com/gpu.present=true")
    return {n["metadata"]["name"]: n for n in nodes}


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> RealNode:
    """The real node of the local cluster (started by cluster.sh up with the control plane)."""
    if not cluster.local:
        pytest.skip("the real node is part of the local cluster only (tests/cluster/node.sh)")
    status = subprocess.run([str(NODE_SH), "status"], cwd=ROOT, capture_output=True, text=True)
    if status.returncode != 0:
        pytest.fail(f"the local cluster runs without its real node ({status.stderr.strip()}); "
                    "it was started with EMBEDDING_IMAGES_NODE=0: tests/cluster/cluster.sh down, then up")
    return RealNode.read()


CHART_COMPONENTS = ("operator", "gateway")


@pytest.fixture  # per test: a node restarted by another test (node.sh down/up) starts empty
def chart_images(real_node: RealNode) -> dict[str, str]:
    """The operator and gateway images as `make images ONLY=operator,gateway VARIANT=cpu` tags them
    (the chart's default repositories at its appVersion), built from this checkout (podman's
    layer cache makes an unchanged build quick; an image of that tag built from another checkout
    or an older commit would run other code), then imported into the node's containerd."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    refs = {c: f"{values[c]['image']['repository']}:{chart['appVersion']}" for c in CHART_COMPONENTS}
    done = subprocess.run([sys.executable, str(ROOT / "images" / "build.py"), "--engine", "podman",
                           "--only", ",".join(CHART_COMPONENTS), "--variant", "cpu"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    done = subprocess.run([str(NODE_SH), "import", *refs.values()], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return refs
