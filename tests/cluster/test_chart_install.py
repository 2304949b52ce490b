"""The chart on the real control plane: install, CRD served, least-privilege RBAC, the operator
(a local `python -m modelservice` authenticated as the chart's ServiceAccount) reconciling the
chart's ModelServices onto the right simulated GPU nodes, upgrade rolling a model, uninstall
keeping only the CRD.

Runs in one module-scoped release; the tests are ordered like a user's session.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from control_plane import BIN, CHART, LOCAL_KUBECONFIG, ROOT
from testkit.processes import interrupt

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

# The session's cluster: the local one until the chart_cluster fixture names it.
ADMIN_KUBECONFIG = LOCAL_KUBECONFIG
NS = "chart-e2e"
RELEASE = "e2e"
SA = f"{RELEASE}-embedding-images-operator"
EMBED = f"{RELEASE}-embedding-images-embedding"
RERANK = f"{RELEASE}-embedding-images-reranker"
CRD = "modelservices.serving.embedding-images.io"
VALUES = {
    "operator": {"image": {"repository": "registry.invalid/operator"}},
    "embedding": {"accelerator": "hopper"},
    "reranker": {"accelerator": "auto", "gpu": {"product": "NVIDIA-L4"}},
}


# --- helpers -----------------------------------------------------------------------------------

def run(*cmd: str, kubeconfig: Path | None = None, check: bool = True, stdin: str | None = None):
    env = {**os.environ, "KUBECONFIG": str(kubeconfig or ADMIN_KUBECONFIG), "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, input=stdin, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kubectl(*args: str, **kw):
    return run(str(BIN / "kubectl"), *args, **kw)


def helm(*args: str, **kw):
    return run(str(BIN / "helm"), *args, **kw)


def get_json(*args: str) -> dict:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def wait_for(what: str, predicate, timeout: float = 90.0, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except AssertionError as exc:  # an object not there yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def can_i(verb: str, resource: str, namespace: str | None = NS, sa: str = f"{NS}:{SA}") -> bool:
    """kubectl auth can-i as the operator's ServiceAccount (`namespace:name`); `resource/sub`
    names a subresource."""
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{sa}"]
    args += [f"--subresource={sub}"] if sub else []
    args += ["-n", namespace] if namespace else []
    return kubectl(*args, check=False).stdout.strip() == "yes"


def install_values(tmp_path: Path, values: dict) -> Path:
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(values))
    return f


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chart_cluster(cluster):
    """The control plane of tests/cluster/conftest.py (or the user's cluster it points at)."""
    global ADMIN_KUBECONFIG
    ADMIN_KUBECONFIG = Path(cluster.kubeconfig)
    return ADMIN_KUBECONFIG


@pytest.fixture(scope="module")
def release(chart_cluster, tmp_path_factory):
    """The chart installed into NS; uninstalled (and the namespace removed) at the end."""
    tmp = tmp_path_factory.mktemp("chart")
    helm("uninstall", RELEASE, "-n", NS, "--ignore-not-found", check=False)
    for ns in (NS, f"{NS}-second"):  # an earlier run's namespaces may still be terminating
        wait_for(f"namespace {ns} of an earlier run to finish terminating",
                 lambda: kubectl("get", "namespace", ns, "-o", "jsonpath={.status.phase}",
                                 check=False).stdout != "Terminating", timeout=120)
    # A CRD left by an earlier release (kept on uninstall) is never deleted here: that would delete
    # every ModelService in a user's cluster. The chart leaves such a CRD alone and says so.
    preexisting_crd = kubectl("get", "crd", CRD, check=False).returncode == 0
    values = install_values(tmp, VALUES)
    # No --wait: the CRDs come from crds/, which Helm creates before it maps the ModelServices.
    proc = helm("install", RELEASE, str(CHART), "-n", NS, "--create-namespace", "-f", str(values), check=False)
    assert proc.returncode == 0, proc.stderr
    yield {"values": values, "tmp": tmp, "install_output": proc.stdout, "preexisting_crd": preexisting_crd}
    helm("uninstall", RELEASE, "-n", NS, "--ignore-not-found", check=False)
    kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=false", check=False)


def sa_kubeconfig(tmp: Path) -> Path:
    """A kubeconfig that authenticates as the chart's operator ServiceAccount (a bound token)."""
    token = kubectl("create", "token", SA, "-n", NS, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(ADMIN_KUBECONFIG.read_text())
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "e2e", "cluster": cluster["cluster"]}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": "operator", "namespace": NS}}],
    }
    path = tmp / "operator-kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def operator(release):
    """`python -m modelservice` with the chart Deployment's own arguments, as the chart's SA."""
    deploy = get_json("deployment", SA, "-n", NS)
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "modelservice"]
    # The chart's liveness port may be taken on this machine; everything else is the chart's.
    args = [a for a in container["args"] if not a.startswith("--liveness")]
    kubeconfig = sa_kubeconfig(release["tmp"])
    log = release["tmp"] / "operator.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelservice", *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
    yield {"proc": proc, "log": log}
    interrupt(proc)


# --- tests ---------------------------------------------------------------------------------------

def test_install_serves_the_crd_and_creates_the_modelservices(release):
    crd = get_json("crd", CRD)
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established.get("Established") == "True"
    # From crds/: not a release resource, so no helm upgrade or uninstall ever deletes it.
    assert "kind: CustomResourceDefinition" not in helm("get", "manifest", RELEASE, "-n", NS).stdout
    resources = kubectl("api-resources", "--api-group=serving.embedding-images.io", "-o", "name").stdout
    assert "modelservices.serving.embedding-images.io" in resources
    names = {m["metadata"]["name"] for m in get_json("modelservices", "-n", NS)["items"]}
    assert names == {EMBED, RERANK}
    assert get_json("deployment", SA, "-n", NS)["spec"]["template"]["spec"]["serviceAccountName"] == SA


NEEDED = [
    ("list", "modelservices.serving.embedding-images.io", NS),
    ("watch", "modelservices.serving.embedding-images.io", NS),
    ("patch", "modelservices.serving.embedding-images.io", NS),
    ("patch", "modelservices.serving.embedding-images.io/status", NS),
    ("create", "deployments.apps", NS),
    ("patch", "deployments.apps", NS),
    ("delete", "services", NS),
    ("create", "events", NS),
    ("watch", "modelcaches.serving.embedding-images.io", NS),
    ("patch", "modelcaches.serving.embedding-images.io/status", NS),
    ("update", "modelcaches.serving.embedding-images.io/finalizers", NS),
    ("create", "persistentvolumeclaims", NS),
    ("delete", "persistentvolumeclaims", NS),
    ("create", "jobs.batch", NS),
    ("delete", "jobs.batch", NS),
    ("list", "pods", NS),
    ("list", "nodes", None),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
]
FORBIDDEN = [
    ("list", "secrets", NS),
    ("get", "secrets", NS),
    ("delete", "secrets", NS),
    ("create", "pods", NS),
    ("create", "pods/exec", NS),
    ("get", "configmaps", NS),
    ("patch", "nodes", None),
    ("delete", "nodes", None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("create", "serviceaccounts/token", NS),
    # The default scope is the release namespace: no Deployment (which could run as any
    # ServiceAccount there and mount its Secrets) in the system namespaces or anywhere else.
    ("create", "deployments.apps", "kube-system"),
    ("patch", "deployments.apps", "kube-system"),
    ("delete", "deployments.apps", "kube-system"),
    ("create", "services", "kube-system"),
    ("create", "deployments.apps", "default"),
    ("patch", "modelservices.serving.embedding-images.io/status", "kube-system"),
    # Download Jobs run pods, so they are as strong as Deployments: only where the operator serves.
    ("create", "jobs.batch", "kube-system"),
    ("create", "persistentvolumeclaims", "kube-system"),
    ("delete", "pods", NS),
]


@pytest.mark.parametrize("verb, resource, namespace", NEEDED)
def test_operator_serviceaccount_may_do_what_it_needs(release, verb, resource, namespace):
    assert can_i(verb, resource, namespace), f"{SA} cannot {verb} {resource}"


@pytest.mark.parametrize("verb, resource, namespace", FORBIDDEN)
def test_operator_serviceaccount_may_do_nothing_more(release, verb, resource, namespace):
    assert not can_i(verb, resource, namespace), f"{SA} may {verb} {resource}"


def test_forbidden_verb_is_refused_by_the_api_with_the_serviceaccount_token(release):
    kubeconfig = sa_kubeconfig(release["tmp"])
    proc = kubectl("get", "secrets", "-n", NS, kubeconfig=kubeconfig, check=False)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower()


def pods_of(name: str) -> list[dict]:
    deploy = get_json("deployment", name, "-n", NS)
    selector = ",".join(f"{k}={v}" for k, v in deploy["spec"]["selector"]["matchLabels"].items())
    return get_json("pods", "-n", NS, "-l", selector)["items"]


def node_product(node: str) -> str:
    return get_json("node", node)["metadata"]["labels"].get("nvidia.com/gpu.product", "")


def test_operator_with_the_chart_rbac_reconciles_onto_the_right_gpu_nodes(operator):
    for name in (EMBED, RERANK):
        wait_for(f"deployment/{name}", lambda n=name: get_json("deployment", n, "-n", NS))
    wait_for("pods scheduled", lambda: all(p["spec"].get("nodeName") for n in (EMBED, RERANK) for p in pods_of(n))
             and pods_of(EMBED) and pods_of(RERANK), timeout=120)
    assert {node_product(p["spec"]["nodeName"]) for p in pods_of(EMBED)} == {"NVIDIA-H100-80GB-HBM3"}
    assert {node_product(p["spec"]["nodeName"]) for p in pods_of(RERANK)} == {"NVIDIA-L4"}
    image = get_json("deployment", EMBED, "-n", NS)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":hopper-1.9")
    ms = wait_for("status on the ModelService", lambda: get_json("modelservice", EMBED, "-n", NS).get("status"))
    assert ms
    log = operator["log"].read_text()
    assert operator["proc"].poll() is None, f"the operator exited:\n{log[-4000:]}"
    for complaint in ("Not enough permissions", "403", "Forbidden"):
        assert complaint not in log, f"the operator hit missing RBAC ({complaint}):\n{log[-4000:]}"


def test_upgrade_changing_the_model_rolls_it(release, operator):
    before = get_json("deployment", EMBED, "-n", NS)
    values = dict(VALUES, embedding={**VALUES["embedding"], "model": "BAAI/bge-base-en-v1.5"})
    proc = helm("upgrade", RELEASE, str(CHART), "-n", NS, "-f", str(install_values(release["tmp"], values)), check=False)
    assert proc.returncode == 0, proc.stderr
    assert get_json("modelservice", EMBED, "-n", NS)["spec"]["model"] == "BAAI/bge-base-en-v1.5"

    def rolled():
        d = get_json("deployment", EMBED, "-n", NS)
        args = d["spec"]["template"]["spec"]["containers"][0].get("args", [])
        return d["metadata"]["generation"] > before["metadata"]["generation"] and "BAAI/bge-base-en-v1.5" in args

    wait_for("the embedding Deployment to roll to the new model", rolled, timeout=120)
    # The ModelServices are release resources (never a hook).
    manifest = helm("get", "manifest", RELEASE, "-n", NS).stdout
    assert "kind: ModelService" in manifest


def test_second_release_installs_beside_the_first_and_leaves_its_crd(release):
    """A second release finds the CRDs (crds/ skips them: already present) and leaves them alone."""
    before = get_json("crd", CRD)["metadata"]
    other_ns = f"{NS}-second"
    values = {"operator": {"enabled": False}, "embedding": {"enabled": False}, "reranker": {"enabled": False}}
    path = install_values(release["tmp"], values)
    try:
        proc = helm("install", "second", str(CHART), "-n", other_ns, "--create-namespace", "-f", str(path), check=False)
        assert proc.returncode == 0, proc.stderr
        after = get_json("crd", CRD)["metadata"]
        assert after.get("annotations") == before.get("annotations")
        assert after["resourceVersion"] == before["resourceVersion"]
    finally:
        helm("uninstall", "second", "-n", other_ns, "--ignore-not-found", check=False)
        kubectl("delete", "namespace", other_ns, "--ignore-not-found", "--wait=false", check=False)
    assert get_json("crd", CRD)["metadata"]["name"] == CRD


def test_upgrade_from_a_cluster_wide_operator_never_silently_narrows_its_scope(release):
    """A release whose operator served every namespace (the chart's default before
    operator.clusterWide), upgraded with the new defaults while ModelServices exist elsewhere,
    fails naming them and the values to choose; choosing a scope then upgrades, and the
    ServiceAccount's reach follows it."""
    ns, apps = f"{NS}-scope", f"{NS}-scope-apps"
    sa = f"{ns}:scope-embedding-images-operator"
    base = {"crds": {"enabled": False}, "embedding": {"enabled": False}, "reranker": {"enabled": False},
            "operator": {"image": {"repository": "registry.invalid/operator"}}}
    wide, defaults = release["tmp"] / "scope-wide.yaml", release["tmp"] / "scope-defaults.yaml"
    wide.write_text(yaml.safe_dump({**base, "operator": {**base["operator"], "clusterWide": True}}))
    defaults.write_text(yaml.safe_dump(base))
    for n in (ns, apps):  # an earlier run's namespaces may still be terminating
        wait_for(f"namespace {n} of an earlier run to finish terminating",
                 lambda: kubectl("get", "namespace", n, check=False).returncode != 0, timeout=120)
    try:
        helm("install", "scope", str(CHART), "-n", ns, "--create-namespace", "-f", str(wide))
        assert can_i("create", "deployments.apps", "kube-system", sa=sa)  # what cluster-wide grants
        kubectl("create", "namespace", apps)
        kubectl("apply", "-n", apps, "-f", "-", stdin=json.dumps({
            "apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "emb"}, "spec": {"task": "embed", "model": "m", "accelerator": "cpu"}}))

        proc = helm("upgrade", "scope", str(CHART), "-n", ns, "-f", str(defaults), check=False)
        assert proc.returncode != 0, proc.stdout
        assert f"ModelServices exist outside namespace {ns} (in {apps})" in proc.stderr
        assert "--set operator.clusterWide=true" in proc.stderr
        assert f"--set 'operator.watchNamespaces={{{ns},{apps}}}'" in proc.stderr
        assert can_i("create", "deployments.apps", "kube-system", sa=sa), "a failed upgrade changes nothing"

        helm("upgrade", "scope", str(CHART), "-n", ns, "-f", str(defaults),
             "--set", f"operator.watchNamespaces={{{ns},{apps}}}")
        assert can_i("create", "deployments.apps", apps, sa=sa)
        assert not can_i("create", "deployments.apps", "kube-system", sa=sa)
        helm("upgrade", "scope", str(CHART), "-n", ns, "-f", str(wide))  # back to cluster-wide, chosen
        assert can_i("create", "deployments.apps", "kube-system", sa=sa)
    finally:
        helm("uninstall", "scope", "-n", ns, "--ignore-not-found", check=False)
        for n in (ns, apps):
            kubectl("delete", "namespace", n, "--ignore-not-found", "--wait=false", check=False)


def test_uninstall_removes_everything_but_the_kept_crd(release, operator):
    helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "120s")
    wait_for("ModelServices gone", lambda: get_json("modelservices", "-n", NS)["items"] == [], timeout=120)
    assert kubectl("get", "deployment", SA, "-n", NS, check=False).returncode != 0
    assert kubectl("get", "serviceaccount", SA, "-n", NS, check=False).returncode != 0
    assert kubectl("get", "clusterrole", SA, check=False).returncode != 0
    assert kubectl("get", "clusterrolebinding", SA, check=False).returncode != 0
    assert get_json("crd", CRD)["metadata"]["name"] == CRD, "the CRD must survive uninstall"


def test_chart_only_model_cache_downloads_before_the_pods_and_keeps_the_files(chart_cluster, tmp_path):
    """Without the operator, a plain `helm install` creates the claim, the download Job and the
    reranker's Deployment as release resources; the Job completes (kwok completes its pod; the
    download itself is tested for real in tests/service/test_model_download.py); the pods wait for
    it in their init container, mount the claim read-only and run offline; an upgrade with the
    same values leaves the Job as it is; uninstall keeps the claim and its files, and installing
    again takes the kept claim back."""
    ns, release = f"{NS}-cache", "cached"
    name = f"{release}-embedding-images-reranker"
    claim = f"modelcache-{name}"
    pv = f"{ns}-{claim}"
    kubectl("create", "namespace", ns, check=False)
    kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "cache-test",
                 "hostPath": {"path": str(tmp_path / "volume")}, "claimRef": {"namespace": ns, "name": claim}}}))
    values = {"operator": {"enabled": False}, "embedding": {"enabled": False},
              "reranker": {"accelerator": "cpu", "modelCache": {"enabled": True, "size": "1Gi",
                                                                "storageClassName": "cache-test"}}}
    try:
        proc = helm("install", release, str(CHART), "-n", ns, "-f", str(install_values(tmp_path, values)), check=False)
        assert proc.returncode == 0, proc.stderr
        (job,) = wait_for("the download Job to succeed", lambda: [
            j for j in get_json("jobs", "-n", ns)["items"] if (j.get("status") or {}).get("succeeded") == 1], timeout=120)
        assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "modelservice.cache.download"]
        dep = get_json("deployment", name, "-n", ns)
        spec = dep["spec"]["template"]["spec"]
        (wait,) = spec["initContainers"]
        assert wait["args"][-1] == "--wait" and wait["image"] == job["spec"]["template"]["spec"]["containers"][0]["image"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HF_HUB_OFFLINE"] == "1"
        assert env["RERANKER_MODEL"] == "/models/models/Qwen--Qwen3-Reranker-0.6B/main"
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
        assert {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}} in spec["volumes"]
        assert get_json("pvc", claim, "-n", ns)["status"]["phase"] == "Bound"
        # The same values: the same Job, left as it is (a Job's pod template cannot change).
        proc = helm("upgrade", release, str(CHART), "-n", ns, "-f", str(install_values(tmp_path, values)), check=False)
        assert proc.returncode == 0, proc.stderr
        (again,) = get_json("jobs", "-n", ns)["items"]
        assert again["metadata"]["uid"] == job["metadata"]["uid"]
        helm("uninstall", release, "-n", ns, "--wait", "--timeout", "60s")
        kept = get_json("pvc", claim, "-n", ns)   # kept: the files stay
        proc = helm("install", release, str(CHART), "-n", ns, "-f", str(install_values(tmp_path, values)), check=False)
        assert proc.returncode == 0, proc.stderr
        assert get_json("pvc", claim, "-n", ns)["metadata"]["uid"] == kept["metadata"]["uid"]
    finally:
        helm("uninstall", release, "-n", ns, "--ignore-not-found", check=False)
        kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
        kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)
