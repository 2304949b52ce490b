"""A platform team's first day with the chart, on the real control plane: a private registry in
operator mode (the chart's pull secret on every model pod and download Job, a ModelService adding
its own); a plain `helm install` (no `--wait`) into a cluster without the CRDs, ten times, with
Helm 4 and Helm 3; a GitOps render (`helm template`) applied twice with server-side apply, the
second time changing nothing; an upgrade from the first chart layout that had the operator keeps
every ModelService and its pods serving.

The operator runs here as a local `python -m modelservice` with the arguments of the chart's own
operator Deployment (its image is not pulled; kwok's nodes run no container).
"""
from __future__ import annotations

import json
import os
import signal
import tarfile
import threading
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from control_plane import CHART, ROOT, Cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

RELEASE = "day1"
OPERATOR = f"{RELEASE}-embedding-images-operator"
EMBED = f"{RELEASE}-embedding-images-embedding"
RERANK = f"{RELEASE}-embedding-images-reranker"
BASE_VALUES: dict[str, Any] = {
    "operator": {"image": {"repository": "registry.invalid/operator"}},
    "gateway": {"enabled": False},
    "embedding": {"accelerator": "cpu"},
    "reranker": {"accelerator": "cpu"},
}


HELM3_SH = ROOT / "tests" / "chart" / "helm3.sh"
CRDS = ("modelservices.serving.embedding-images.io", "modelcaches.serving.embedding-images.io")


def helm(cluster: Cluster, *args: str, check: bool = True, binary: str = "helm") -> subprocess.CompletedProcess:
    proc = subprocess.run([binary, *args], env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


class LocalOperator:
    """`python -m modelservice` with the chart Deployment's arguments (the liveness port left out:
    it may be taken on this machine), against the cluster's kubeconfig."""

    def __init__(self, cluster: Cluster, namespace: str, log: Path):
        deployment = cluster.get("deployment", OPERATOR, "-n", namespace)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        self.args = [a for a in container["args"] if not a.startswith("--liveness")]
        self.cluster, self.log = cluster, log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LocalOperator":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "modelservice", *self.args],
                                         env={**self.cluster.env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *_: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def release_namespace(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A fresh namespace; the release in it is uninstalled when the test ends."""
    yield namespace
    helm(cluster, "uninstall", RELEASE, "-n", namespace, "--ignore-not-found", "--wait", check=False)


def pods_of(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return cluster.get("pods", "-n", namespace, "-l", f"serving.embedding-images.io/modelservice={name}")["items"]


def pull_secrets(pod_spec: dict[str, Any]) -> list[str]:
    return [ref["name"] for ref in pod_spec.get("imagePullSecrets") or []]


def test_a_pull_secret_in_values_reaches_every_model_pod_and_the_download_job(cluster, release_namespace, tmp_path):
    ns = release_namespace
    values = {**BASE_VALUES, "imagePullSecrets": [{"name": "regcred"}],
              "reranker": {"accelerator": "cpu", "imagePullSecrets": [{"name": "reranker-registry"}]}}
    helm(cluster, "install", RELEASE, str(CHART), "-n", ns, "-f", str(values_file(tmp_path, values)))
    # A ModelService made with kubectl adds its own secret to the operator's default, and a
    # ModelCache's download Job pulls the operator's image with the default.
    extra = {"apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelService",
             "metadata": {"name": "extra", "namespace": ns},
             "spec": {"task": "embed", "model": "BAAI/bge-small-en-v1.5", "accelerator": "cpu",
                      "pod": {"imagePullSecrets": [{"name": "team-registry"}, {"name": "regcred"}]}}}
    cache = {"apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelCache",
             "metadata": {"name": "bge", "namespace": ns},
             "spec": {"model": "BAAI/bge-small-en-v1.5", "size": "1Gi"}}
    cluster.apply(extra)
    cluster.apply(cache)
    expected = {EMBED: ["regcred"], RERANK: ["regcred", "reranker-registry"], "extra": ["regcred", "team-registry"]}
    with LocalOperator(cluster, ns, tmp_path / "operator.log") as operator:
        for name, secrets in expected.items():
            pods = wait_for(f"pods of {name}", lambda n=name: pods_of(cluster, ns, n), timeout=120)
            assert operator.proc.poll() is None, operator.tail()
            for pod in pods:
                assert pull_secrets(pod["spec"]) == secrets, (name, pod["metadata"]["name"])
        jobs = wait_for("the download Job of ModelCache bge",
                        lambda: cluster.get("jobs", "-n", ns, "-l", "serving.embedding-images.io/modelcache=bge")["items"],
                        timeout=120)
        for job in jobs:
            assert pull_secrets(job["spec"]["template"]["spec"]) == ["regcred"], job["metadata"]["name"]


@pytest.fixture(scope="module")
def helm_binaries(cluster: Cluster) -> dict[str, str]:
    """Helm 4 (tests/cluster/tools.sh, on the cluster's PATH) and Helm 3 (tests/chart/helm3.sh)."""
    helm3 = ROOT / ".cache" / "bin" / "helm3"
    if not helm3.exists():
        subprocess.run([str(HELM3_SH)], cwd=ROOT, check=True)
    return {"helm4": "helm", "helm3": str(helm3)}


INSTALLS = 10


@pytest.mark.parametrize("version", ["helm4", "helm3"])
def test_a_plain_install_into_a_cluster_without_the_crds_succeeds_every_time(cluster, helm_binaries, namespace,
                                                                            tmp_path, version):
    """`helm install` without `--wait`, the CRDs deleted before each: the chart's ModelServices and
    ModelCache are created once their kinds are served (crds/), every time."""
    if not cluster.local:
        pytest.skip("deletes the CRDs, and with them every ModelService of the cluster: local control plane only")
    binary = helm_binaries[version]
    values = values_file(tmp_path, {**BASE_VALUES, "embedding": {"accelerator": "cpu",
                                                                 "modelCache": {"enabled": True, "size": "1Gi"}}})
    failures, seconds = [], []
    for attempt in range(INSTALLS):
        cluster.kubectl("delete", "crd", *CRDS, "--ignore-not-found", "--wait=true", timeout=120)
        start = time.monotonic()
        proc = helm(cluster, "install", RELEASE, str(CHART), "-n", namespace, "-f", str(values), check=False,
                    binary=binary)
        seconds.append(time.monotonic() - start)
        if proc.returncode != 0:
            failures.append(f"install {attempt + 1}: {proc.stderr.strip()}")
        else:
            names = sorted(ms["metadata"]["name"] for ms in cluster.get("modelservices", "-n", namespace)["items"])
            if names != [EMBED, RERANK] or not cluster.get("modelcaches", EMBED, "-n", namespace):
                failures.append(f"install {attempt + 1}: ModelServices {names}")
        helm(cluster, "uninstall", RELEASE, "-n", namespace, "--wait", check=False, binary=binary)
    cluster.kubectl("delete", "crd", *CRDS, "--ignore-not-found", timeout=120)
    print(f"{version}: {INSTALLS} installs without --wait, {min(seconds):.1f}-{max(seconds):.1f} s each")
    assert not failures, "\n".join(failures)


def _settled_deployment(d: dict[str, Any]) -> bool:
    status, want = d.get("status") or {}, d["spec"].get("replicas", 1)
    return (status.get("observedGeneration") == d["metadata"]["generation"]
            and status.get("updatedReplicas", 0) == want == status.get("readyReplicas", 0)
            and status.get("replicas", 0) == want)


def _settled(cluster: Cluster, namespace: str) -> bool:
    """Every Deployment of the namespace rolled out and ready (their controllers write no more)."""
    return all(_settled_deployment(d) for d in cluster.get("deployments", "-n", namespace)["items"])


def _versions(cluster: Cluster, manifest: str) -> dict[str, str]:
    """kind/namespace/name -> resourceVersion of every object of a manifest, as the cluster has it."""
    listed = json.loads(cluster.kubectl("get", "-f", "-", "-o", "json", input=manifest).stdout)
    return {f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
            for o in listed["items"]}


def test_a_gitops_render_applied_twice_changes_nothing_the_second_time(cluster, namespace, tmp_path):
    """What Argo CD or Flux do on every sync: render without a cluster (`helm template
    --include-crds`; hooks are theirs to run, here the `helm test` pod is left out), server-side
    apply, render again, apply again. The renders are the same, and once the controllers have
    settled the second apply writes nothing (no object's resourceVersion moves)."""
    values = values_file(tmp_path, {**BASE_VALUES, "gateway": {"enabled": True},
                                    "imagePullSecrets": [{"name": "regcred"}],
                                    "commonLabels": {"team": "search"}, "networkPolicy": {"enabled": True},
                                    "embedding": {"accelerator": "cpu", "modelCache": {"enabled": True, "size": "1Gi"},
                                                  "podDisruptionBudget": {"enabled": True},
                                                  "topologySpreadConstraints": [
                                                      {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                                       "whenUnsatisfiable": "ScheduleAnyway"}]}})

    def render() -> str:
        out = helm(cluster, "template", RELEASE, str(CHART), "-n", namespace, "-f", str(values), "--include-crds").stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        kept = [d for d in docs if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
        assert len(kept) == len(docs) - 1, "only the helm test pod is a hook"
        return yaml.safe_dump_all(kept)

    def apply(manifest: str) -> None:
        # --force-conflicts, as Argo CD and Flux apply: the CRDs may have been created by a Helm install
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=gitops", "-f", "-",
                        input=manifest, timeout=120)

    first = render()
    try:
        apply(first)
        # The cluster stores each CRD as the chart has it (nothing pruned): another manager's apply
        # of the same file (Helm 4 installs crds/ with server-side apply) then conflicts on nothing.
        for doc in yaml.safe_load_all(first):
            if doc and doc["kind"] == "CustomResourceDefinition":
                stored = cluster.get("crd", doc["metadata"]["name"])
                assert stored["spec"]["versions"] == doc["spec"]["versions"], doc["metadata"]["name"]
        second = render()
        assert second == first
        wait_for("the Deployments to settle", lambda: _settled(cluster, namespace), timeout=120)
        before = _versions(cluster, second)
        apply(second)
        after = _versions(cluster, second)
        changed = sorted(k for k in before if before[k] != after[k])
        assert not changed, f"the second apply changed {changed}"
        assert len(before) >= 15, sorted(before)
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=yaml.safe_dump_all(
            [d for d in yaml.safe_load_all(first) if d and d["kind"] != "CustomResourceDefinition"]), check=False)


# The first commit whose chart installed the operator and its ModelServices (the CRD generated
# into files/, the ModelServices a post-install hook on a first install, a cluster-wide operator).
FIRST_OPERATOR_LAYOUT = "10e6645"


def _old_chart(tmp_path: Path) -> Path:
    archive = subprocess.run(["git", "archive", FIRST_OPERATOR_LAYOUT, "charts/embedding-images"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    (tmp_path / "old.tar").write_bytes(archive)
    with tarfile.open(tmp_path / "old.tar") as tar:
        tar.extractall(tmp_path / "old", filter="data")
    return tmp_path / "old" / "charts" / "embedding-images"


def test_upgrade_from_the_first_operator_layout_keeps_every_modelservice_serving(cluster, namespace, tmp_path):
    """The release installed with the first chart that had the operator (its CRD rendered from
    templates and owned by the release, its ModelServices a post-install hook), an operator
    reconciling them, then `helm upgrade` to this chart: the CRD, the ModelServices and their
    Deployments are the same objects (none deleted and created again), the ModelServices become
    release resources (both CRDs too: the ModelCache CRD arrives with the upgrade), and each model
    keeps a ready pod throughout (sampled every 0.2 s from before the upgrade until its pods
    settle). The operator here is this checkout's, before and after: the old image is not built."""
    if not cluster.local:
        pytest.skip("deletes the CRDs, and with them every ModelService of the cluster: local control plane only")
    try:
        subprocess.run(["git", "cat-file", "-e", FIRST_OPERATOR_LAYOUT], cwd=ROOT, check=True, capture_output=True)
    except subprocess.CalledProcessError:
        pytest.fail(f"commit {FIRST_OPERATOR_LAYOUT} (the first operator layout) is not in this clone's history")
    cluster.kubectl("delete", "crd", *CRDS, "--ignore-not-found", "--wait=true", timeout=120)
    values = values_file(tmp_path, {"operator": {"image": {"repository": "registry.invalid/operator"}},
                                    "embedding": {"accelerator": "cpu"}, "reranker": {"accelerator": "cpu"}})
    # That layout's README: a first install with --wait.
    helm(cluster, "install", RELEASE, str(_old_chart(tmp_path)), "-n", namespace, "-f", str(values),
         "--wait", "--timeout", "180s")
    models = (EMBED, RERANK)
    operator_log = tmp_path / "operator.log"

    def ready(name: str) -> int:
        d = cluster.get("deployment", name, "-n", namespace)
        return int((d.get("status") or {}).get("readyReplicas") or 0)

    def uids() -> dict[str, str]:
        objects = {"crd/modelservices": cluster.get("crd", CRDS[0])}
        for name in models:
            objects[f"modelservice/{name}"] = cluster.get("modelservice", name, "-n", namespace)
            objects[f"deployment/{name}"] = cluster.get("deployment", name, "-n", namespace)
        return {k: o["metadata"]["uid"] for k, o in objects.items()}

    # This checkout's operator, serving the release namespace, in place of the old image.
    serving = subprocess.Popen([sys.executable, "-m", "modelservice", f"--namespace={namespace}"],
                               env={**cluster.env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT,
                               stdout=open(operator_log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    lowest: dict[str, int] = {}
    stop = threading.Event()

    def watch() -> None:  # the fewest ready pods each model had while the upgrade ran
        while not stop.is_set():
            for name in models:
                try:
                    lowest[name] = min(lowest.get(name, 99), ready(name))
                except AssertionError:
                    lowest[name] = 0
            time.sleep(0.2)

    try:
        wait_for("both models ready under the old layout",
                 lambda: all(ready(n) >= 1 for n in models), timeout=120)
        before = uids()
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            helm(cluster, "upgrade", RELEASE, str(CHART), "-n", namespace, "-f", str(values))

            def settled() -> bool:
                time.sleep(2)  # the operator's reconcile of the upgraded ModelServices, if any
                return all(_settled_deployment(cluster.get("deployment", name, "-n", namespace)) for name in models)

            wait_for("the models' pods to settle after the upgrade", settled, timeout=180)
        finally:
            stop.set()
            watcher.join()
        assert uids() == before, "an object was deleted and created again"
        assert lowest == {name: 1 for name in models}, f"a model lost its ready pod during the upgrade: {lowest}"
        manifest = [d for d in yaml.safe_load_all(helm(cluster, "get", "manifest", RELEASE, "-n", namespace).stdout) if d]
        kinds = [d["kind"] for d in manifest]
        assert kinds.count("ModelService") == 2, "the ModelServices are release resources now"
        assert kinds.count("CustomResourceDefinition") == 2, "the release owns (and updates) both CRDs"
        assert cluster.get("crd", CRDS[1])["metadata"]["name"] == CRDS[1]
        assert serving.poll() is None, operator_log.read_text()[-3000:]
    finally:
        os.killpg(serving.pid, signal.SIGTERM)
        serving.wait(timeout=30)
        helm(cluster, "uninstall", RELEASE, "-n", namespace, "--wait", check=False)
