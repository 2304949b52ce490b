"""`helm template` over the values a user would write, with assertions on the rendered objects:
GPU variant -> image and node pinning, RBAC scope, optional objects, config roll, and the clear
failures on contradictory values."""
from __future__ import annotations

import pytest
import yaml

from .conftest import CHART

pytestmark = pytest.mark.helm

TABLE = yaml.safe_load((CHART / "files" / "variants.yaml").read_text())
VARIANTS = {v["name"]: v for v in TABLE["variants"]}
TEI = TABLE["tei"]["repository"]
RERANKER = TABLE["reranker"]["repository"]
NO_CRD = ["crds.enabled=false"]
PLAIN = ["operator.enabled=false", "crds.enabled=false"]


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict) -> dict:
    (c,) = pod_spec(deployment)["containers"]
    return c


# --- operator mode -----------------------------------------------------------------------------

def test_defaults_install_the_operator_and_two_modelservices(render):
    out = render(sets=NO_CRD)
    assert out.names("Deployment") == ["rel-embedding-images-gateway", "rel-embedding-images-operator"]
    assert out.names("ModelService") == ["rel-embedding-images-embedding", "rel-embedding-images-reranker"]
    emb = out.get("ModelService", "rel-embedding-images-embedding")["spec"]
    assert emb["task"] == "embed" and emb["model"] == "BAAI/bge-small-en-v1.5"
    assert emb["accelerator"] == "cpu" and emb["replicas"] == 1 and emb["port"] == 8080
    rr = out.get("ModelService", "rel-embedding-images-reranker")["spec"]
    assert rr["task"] == "rerank" and rr["model"] == "Qwen/Qwen3-Reranker-0.6B"
    assert out.names("Service") == ["rel-embedding-images-gateway"], "with the operator, the models' Services are the operator's to create"


def test_operator_runs_modelservice_standalone_with_restricted_pod_security(render):
    out = render(sets=NO_CRD)
    dep = out.get("Deployment", "rel-embedding-images-operator")
    c = container(dep)
    assert c["command"] == ["python", "-m", "modelservice"]
    assert "--standalone" in c["args"] and "--namespace=models" in c["args"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["memory"]
    assert pod_spec(dep)["serviceAccountName"] == "rel-embedding-images-operator"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"


def test_modelservice_spec_carries_gpu_and_options(render):
    out = render(values={
        "embedding": {"accelerator": "auto", "gpu": {"product": "NVIDIA-L4"}, "revision": "v1",
                      "hfTokenSecretRef": {"name": "hf", "key": "token"},
                      "cache": {"existingClaim": "models"}, "env": [{"name": "A", "value": "b"}]},
    }, sets=NO_CRD)
    spec = out.get("ModelService", "rel-embedding-images-embedding")["spec"]
    assert spec["accelerator"] == "auto"
    assert spec["gpu"] == {"product": "NVIDIA-L4"}
    assert spec["revision"] == "v1"
    assert spec["hfTokenSecretRef"] == {"name": "hf", "key": "token"}
    assert spec["cache"] == {"existingClaim": "models"}
    assert spec["env"] == [{"name": "A", "value": "b"}]


def test_disabled_models_are_not_rendered(render):
    out = render(sets=NO_CRD + ["reranker.enabled=false"])
    assert out.names("ModelService") == ["rel-embedding-images-embedding"]


# --- RBAC ---------------------------------------------------------------------------------------

def rules_of(obj: dict) -> dict[str, set[str]]:
    """resource -> verbs, over every rule of a Role/ClusterRole."""
    found: dict[str, set[str]] = {}
    for rule in obj["rules"]:
        for res in rule["resources"]:
            found.setdefault(res, set()).update(rule["verbs"])
    return found


def assert_model_cache_rules(rules: dict[str, set[str]]) -> None:
    """ModelCaches as kopf handles them, their claims and download Jobs written, and their pods
    only listed (the downloader's termination message): never a pod write."""
    assert rules["modelcaches"] == {"get", "list", "watch", "patch", "update"}
    assert rules["modelcaches/status"] == {"get", "patch", "update"}
    assert rules["modelcaches/finalizers"] == {"update"}
    assert rules["persistentvolumeclaims"] == {"get", "list", "watch", "create", "patch", "delete"}
    assert rules["jobs"] == {"get", "list", "watch", "create", "patch", "delete"}
    assert rules["pods"] == {"list", "watch"}


def test_cluster_wide_rbac_is_one_clusterrole(render):
    out = render(sets=NO_CRD + ["operator.clusterWide=true"])
    assert out.kinds("Role") == [] and out.kinds("RoleBinding") == []
    role = out.get("ClusterRole", "rel-embedding-images-operator")
    rules = rules_of(role)
    assert {"get", "list", "watch", "patch"} <= rules["modelservices"]
    assert "patch" in rules["modelservices/status"]
    assert {"create", "patch", "delete"} <= rules["deployments"] and {"create", "patch", "delete"} <= rules["services"]
    assert rules["networkpolicies"] == {"get", "list", "watch", "create", "patch", "delete"}
    assert_model_cache_rules(rules)
    assert rules["nodes"] == {"get", "list", "watch"}
    assert rules["events"] == {"create"}
    binding = out.get("ClusterRoleBinding", "rel-embedding-images-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-embedding-images-operator", "namespace": "models"}]


def test_namespaced_rbac_is_a_role_per_watched_namespace(render):
    out = render(values={"operator": {"watchNamespaces": ["team-a", "team-b"]}}, sets=NO_CRD)
    roles = [r for r in out.kinds("Role") if r["metadata"]["name"] == "rel-embedding-images-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert "modelservices" in rules_of(role) and "deployments" in rules_of(role)
        assert rules_of(role)["networkpolicies"] == {"get", "list", "watch", "create", "patch", "delete"}
        assert_model_cache_rules(rules_of(role))
    bindings = [b for b in out.kinds("RoleBinding") if b["metadata"]["name"] == "rel-embedding-images-operator"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["subjects"][0]["namespace"] == "models"
    cluster_rules = rules_of(out.get("ClusterRole", "rel-embedding-images-operator"))
    assert set(cluster_rules) == {"nodes", "customresourcedefinitions", "namespaces"}
    assert all(verbs <= {"get", "list", "watch"} for verbs in cluster_rules.values()), cluster_rules
    args = container(out.get("Deployment", "rel-embedding-images-operator"))["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_only_the_device_plugin_sharing_mode_may_patch_node_status(render):
    """--gpu-sharing=devicePlugin advertises each shared-GPU node's memory (a node status patch);
    the other modes keep the cluster role read-only."""
    for mode, extra in (("dra", set()), ("off", set()), ("devicePlugin", {"nodes/status"})):
        out = render(values={"operator": {"gpuSharing": mode}}, sets=NO_CRD)
        rules = rules_of(out.get("ClusterRole", "rel-embedding-images-operator"))
        assert set(rules) - {"nodes", "customresourcedefinitions", "namespaces"} == extra, mode
        if extra:
            assert rules["nodes/status"] == {"patch"}
        args = container(out.get("Deployment", "rel-embedding-images-operator"))["args"]
        assert f"--gpu-sharing={mode}" in args


SA = ("models", "rel-embedding-images-operator")


def may(out, verb: str, group: str, resource: str, namespace: str, sa: tuple[str, str] = SA) -> bool:
    """What `kubectl auth can-i VERB RESOURCE.GROUP -n NAMESPACE --as SA` would answer, from the
    rendered roles and bindings alone: a ClusterRoleBinding grants its ClusterRole everywhere, a
    RoleBinding grants its Role (or ClusterRole) in the binding's namespace."""
    subject = {"kind": "ServiceAccount", "namespace": sa[0], "name": sa[1]}
    roles = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]): r
             for r in out.kinds("ClusterRole") + out.kinds("Role")}
    for binding in out.kinds("ClusterRoleBinding") + out.kinds("RoleBinding"):
        if subject not in binding["subjects"]:
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        if scope not in (None, namespace):
            continue
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"]))
        for rule in (role or {}).get("rules", []):
            if (group in rule["apiGroups"] or "*" in rule["apiGroups"]) and \
                    (resource in rule["resources"] or "*" in rule["resources"]) and \
                    (verb in rule["verbs"] or "*" in rule["verbs"]):
                return True
    return False


WRITES = [("create", "apps", "deployments"), ("patch", "apps", "deployments"),
          ("delete", "apps", "deployments"), ("create", "", "services"),
          ("create", "batch", "jobs"), ("create", "", "persistentvolumeclaims")]


@pytest.mark.parametrize("verb, group, resource", WRITES)
def test_default_install_writes_workloads_only_in_its_own_namespace(render, verb, group, resource):
    """The default scope is the release namespace: the operator's ServiceAccount cannot create a
    Deployment (which could run as any ServiceAccount there and mount its Secrets) in kube-system
    or any other namespace."""
    out = render(sets=NO_CRD)
    assert may(out, verb, group, resource, "models")
    for namespace in ("kube-system", "kube-public", "default", "team-a"):
        assert not may(out, verb, group, resource, namespace), f"{verb} {resource} in {namespace}"
    args = container(out.get("Deployment", "rel-embedding-images-operator"))["args"]
    assert "--namespace=models" in args and "--all-namespaces" not in args


def test_watched_namespaces_are_the_only_ones_written(render):
    out = render(values={"operator": {"watchNamespaces": ["team-a", "team-b"]}}, sets=NO_CRD)
    assert may(out, "create", "apps", "deployments", "team-a") and may(out, "create", "apps", "deployments", "team-b")
    assert not may(out, "create", "apps", "deployments", "models")
    assert not may(out, "create", "apps", "deployments", "kube-system")


def test_cluster_wide_is_an_explicit_choice_and_says_what_it_grants(render):
    """clusterWide gives the ServiceAccount kube-system too (RBAC has no "all but"): the operator's
    --refused-namespaces is then what keeps ModelServices out of the system namespaces."""
    out = render(sets=NO_CRD + ["operator.clusterWide=true"])
    assert may(out, "create", "apps", "deployments", "kube-system")
    args = container(out.get("Deployment", "rel-embedding-images-operator"))["args"]
    assert "--all-namespaces" in args
    assert "--refused-namespaces=kube-system,kube-public,kube-node-lease" in args


def test_refused_namespaces_reach_the_operator(render):
    out = render(sets=NO_CRD + ["operator.refusedNamespaces={kube-system,platform-*}"])
    args = container(out.get("Deployment", "rel-embedding-images-operator"))["args"]
    assert "--refused-namespaces=kube-system,platform-*" in args
    out = render(sets=NO_CRD + ["operator.refusedNamespaces=null"])  # --reuse-values from an older chart
    args = container(out.get("Deployment", "rel-embedding-images-operator"))["args"]
    assert not [a for a in args if a.startswith("--refused-namespaces")]  # the operator's default


@pytest.mark.parametrize("sets, namespace, message", [
    (["operator.clusterWide=true", "operator.watchNamespaces={team-a}"], "models",
     "operator.clusterWide is true and operator.watchNamespaces lists team-a: choose one"),
    (["operator.watchNamespaces={team-a,kube-system}"], "models",
     "would serve namespace kube-system, which operator.refusedNamespaces refuses"),
    ([], "kube-system", "would serve namespace kube-system, which operator.refusedNamespaces refuses"),
])
def test_a_scope_that_contradicts_itself_or_reaches_a_system_namespace_fails(render_error, sets, namespace, message):
    assert message in render_error(sets=NO_CRD + sets, namespace=namespace)


@pytest.mark.parametrize("values_file", sorted((CHART / "ci").glob("*.yaml")), ids=lambda p: p.stem)
def test_rbac_never_grants_secrets_pod_writes_or_wildcards(render, values_file):
    """Pods are only listed and watched (to report those the scheduler cannot place), in a rule of
    their own: never read one by name, written, exec'd into."""
    out = render(files=[values_file], sets=NO_CRD)
    for role in out.kinds("ClusterRole") + out.kinds("Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert not {"secrets", "pods/exec", "pods/log", "configmaps"} & set(rule["resources"]), rule
            if "pods" in rule["resources"]:
                assert rule["resources"] == ["pods"] and set(rule["verbs"]) <= {"list", "watch"}, rule


def test_rbac_can_be_left_to_the_user(render):
    out = render(sets=NO_CRD + ["operator.rbac.create=false", "operator.serviceAccount.create=false",
                                "operator.serviceAccount.name=my-sa", "gateway.rbac.create=false",
                                "gateway.serviceAccount.create=false", "gateway.serviceAccount.name=my-gw"])
    assert out.kinds("ClusterRole") == [] and out.kinds("Role") == [] and out.kinds("ServiceAccount") == []
    assert pod_spec(out.get("Deployment", "rel-embedding-images-operator"))["serviceAccountName"] == "my-sa"
    assert pod_spec(out.get("Deployment", "rel-embedding-images-gateway"))["serviceAccountName"] == "my-gw"


# --- plain workloads: GPU variant -> image and node pinning --------------------------------------

@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_picks_its_tei_image_and_pins_its_nodes(render, name):
    variant = VARIANTS[name]
    out = render(sets=PLAIN + [f"embedding.accelerator={name}", "reranker.enabled=false"])
    dep = out.get("Deployment", "rel-embedding-images-embedding")
    spec, c = pod_spec(dep), container(dep)
    assert c["image"] == f"{TEI}:{variant['teiTag']}"
    if variant["gpu"]:
        major, minor = variant["computeCapabilities"][0].split(".")
        assert spec["nodeSelector"]["nvidia.com/gpu.compute.major"] == major
        assert spec["nodeSelector"]["nvidia.com/gpu.compute.minor"] == minor
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    else:
        assert "nodeSelector" not in spec and "tolerations" not in spec
        assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})


@pytest.mark.parametrize("product", sorted(TABLE["products"]))
def test_gpu_product_maps_to_its_architecture_and_pins_the_product(render, product):
    cap = TABLE["products"][product]
    (variant,) = [v for v in TABLE["variants"] if cap in v["computeCapabilities"]]
    out = render(sets=PLAIN + ["embedding.accelerator=auto", f"embedding.gpu.product={product}",
                               "reranker.accelerator=auto", f"reranker.gpu.product={product}"])
    emb = out.get("Deployment", "rel-embedding-images-embedding")
    assert container(emb)["image"] == f"{TEI}:{variant['teiTag']}"
    assert pod_spec(emb)["nodeSelector"] == {"nvidia.com/gpu.product": product}
    rr = out.get("Deployment", "rel-embedding-images-reranker")
    assert container(rr)["image"] == f"{RERANKER}:{variant['rerankerTag']}"
    assert pod_spec(rr)["nodeSelector"] == {"nvidia.com/gpu.product": product}


def test_user_node_selector_and_tolerations_are_kept_beside_the_gpu_ones(render):
    out = render(files=[CHART / "ci" / "plain-gpu-values.yaml"])
    spec = pod_spec(out.get("Deployment", "rel-embedding-images-embedding"))
    assert spec["nodeSelector"]["topology.kubernetes.io/zone"] == "zone-a"
    assert spec["nodeSelector"]["nvidia.com/gpu.compute.major"] == "9"
    keys = [t["key"] for t in spec["tolerations"]]
    assert "dedicated" in keys and "nvidia.com/gpu" in keys
    assert container(out.get("Deployment", "rel-embedding-images-embedding"))["resources"]["limits"]["nvidia.com/gpu"] == 2
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "model-cache"}


def test_reranker_engine_follows_the_model(render):
    out = render(sets=PLAIN)
    assert container(out.get("Deployment", "rel-embedding-images-reranker"))["image"] == f"{RERANKER}:{VARIANTS['cpu']['rerankerTag']}"
    out = render(sets=PLAIN + ["reranker.model=BAAI/bge-reranker-base"])
    c = container(out.get("Deployment", "rel-embedding-images-reranker"))
    assert c["image"] == f"{TEI}:{VARIANTS['cpu']['teiTag']}"
    assert c["args"][:2] == ["--model-id", "BAAI/bge-reranker-base"]


def test_service_exposes_the_port_and_targets_http(render):
    out = render(files=[CHART / "ci" / "plain-cpu-values.yaml"])
    svc = out.get("Service", "rel-embedding-images-reranker")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}]
    dep = out.get("Deployment", "rel-embedding-images-reranker")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert set(dep["spec"]["selector"]["matchLabels"]) == {
        "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
    assert container(dep)["ports"][0]["name"] == "http"


# --- restricted pod security everywhere ----------------------------------------------------------

@pytest.mark.parametrize("values_file", sorted((CHART / "ci").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_pod_is_restricted(render, values_file):
    out = render(files=[values_file], sets=NO_CRD)
    pods = [pod_spec(d) for d in out.kinds("Deployment")] + [p["spec"] for p in out.kinds("Pod")]
    assert pods
    for spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}


# --- PDB, HPA, NetworkPolicy, pull secrets, extra metadata ----------------------------------------

def test_optional_objects_are_off_by_default(render):
    """Off for the models; the gateway's two replicas have their PodDisruptionBudget."""
    out = render(sets=NO_CRD)
    for kind in ("HorizontalPodAutoscaler", "NetworkPolicy"):
        assert out.kinds(kind) == []
    assert out.names("PodDisruptionBudget") == ["rel-embedding-images-gateway"]


def test_hpa_scales_the_modelservice_with_the_operator(render):
    out = render(files=[CHART / "ci" / "operator-namespaced-values.yaml"], sets=NO_CRD)
    hpa = out.get("HorizontalPodAutoscaler", "rel-embedding-images-embedding")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelService",
        "name": "rel-embedding-images-embedding"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert "replicas" not in out.get("ModelService", "rel-embedding-images-embedding")["spec"], \
        "helm must not reset the replicas the HPA chose"
    pdb = out.get("PodDisruptionBudget", "rel-embedding-images-embedding")
    assert pdb["spec"]["minAvailable"] == 1


def test_hpa_pdb_and_networkpolicy_without_the_operator(render):
    out = render(files=[CHART / "ci" / "plain-gpu-values.yaml"])
    dep = out.get("Deployment", "rel-embedding-images-embedding")
    hpa = out.get("HorizontalPodAutoscaler", "rel-embedding-images-embedding")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu", "memory"]
    assert "replicas" not in dep["spec"]
    pdb = out.get("PodDisruptionBudget", "rel-embedding-images-embedding")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]}}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for name in ("rel-embedding-images-embedding", "rel-embedding-images-reranker"):
        netpol = out.get("NetworkPolicy", name)
        assert netpol["spec"]["policyTypes"] == ["Ingress"]
        assert netpol["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    selector = out.get("NetworkPolicy", "rel-embedding-images-embedding")["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    # allowSameNamespace=false: only the helm test pod is let in
    peers = out.get("NetworkPolicy", "rel-embedding-images-embedding")["spec"]["ingress"][0]["from"]
    test_pod = out.kinds("Pod")[0]
    assert len(peers) == 1 and peers[0]["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()


def test_pull_secrets_and_extra_metadata_reach_every_pod(render):
    out = render(values={"imagePullSecrets": [{"name": "regcred"}], "commonLabels": {"team": "search"},
                         "commonAnnotations": {"owner": "me"},
                         "embedding": {"podAnnotations": {"a": "1"}, "podLabels": {"tier": "gold"}}},
                 sets=PLAIN)
    for dep in out.kinds("Deployment"):
        assert pod_spec(dep)["imagePullSecrets"] == [{"name": "regcred"}]
    assert out.kinds("Pod")[0]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    for obj in out.docs:
        assert obj["metadata"]["labels"]["team"] == "search", obj["kind"]
        assert obj["metadata"]["annotations"]["owner"] == "me", obj["kind"]
    tmpl = out.get("Deployment", "rel-embedding-images-embedding")["spec"]["template"]["metadata"]
    assert tmpl["annotations"]["a"] == "1" and tmpl["labels"]["tier"] == "gold"


# --- checksum/config roll --------------------------------------------------------------------------

def checksums(out) -> dict[str, str]:
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in out.kinds("Deployment")}


def test_checksum_changes_with_the_model_config_only(render):
    base = checksums(render(sets=PLAIN))
    changed = checksums(render(sets=PLAIN + ["embedding.engineArgs.maxBatchTokens=4096"]))
    assert changed["rel-embedding-images-embedding"] != base["rel-embedding-images-embedding"]
    assert changed["rel-embedding-images-reranker"] == base["rel-embedding-images-reranker"]
    assert checksums(render(sets=PLAIN)) == base, "the checksum must be stable for the same values"


def test_operator_checksum_changes_with_its_settings(render):
    base = checksums(render(sets=NO_CRD))
    changed = checksums(render(sets=NO_CRD + ["operator.verbose=true"]))
    assert base["rel-embedding-images-operator"] != changed["rel-embedding-images-operator"]


# --- contradictory values fail with the field named ------------------------------------------------

@pytest.mark.parametrize("sets, message", [
    (["embedding.gpu.count=2"], "embedding.accelerator=cpu contradicts embedding.gpu.count=2"),
    (["reranker.gpu.product=NVIDIA-L4"], "reranker.accelerator=cpu contradicts reranker.gpu.product"),
    (["embedding.accelerator=auto", "embedding.gpu.product=Quadro-K600"], 'embedding.gpu.product="Quadro-K600" is not in files/variants.yaml'),
    (["embedding.accelerator=hopper", "embedding.gpu.product=NVIDIA-L4"], "does not run the hopper image"),
    (["reranker.model=Qwen/Qwen3-Reranker-4B", "reranker.engine=tei"], "cannot run on TEI"),
    (["embedding.engine=reranker"], "embedding.engine=reranker cannot serve embeddings"),
    (["embedding.autoscaling.enabled=true", "embedding.autoscaling.minReplicas=5", "embedding.autoscaling.maxReplicas=2"],
     "embedding.autoscaling.minReplicas (5) is greater than embedding.autoscaling.maxReplicas (2)"),
])
def test_contradictory_values_fail_with_a_clear_message(render_error, sets, message):
    assert message in render_error(sets=NO_CRD + sets)


def test_auto_without_the_operator_asks_for_an_architecture_or_product(render_error):
    err = render_error(sets=PLAIN + ["embedding.accelerator=auto"])
    assert "embedding.accelerator=auto needs the operator" in err
    assert "embedding.gpu.product" in err


# --- strict schema: typos fail with the key named ---------------------------------------------------

@pytest.mark.parametrize("sets, key", [
    (["embeding.model=x"], "embeding"),
    (["embedding.gpu.prodct=NVIDIA-L4"], "prodct"),
    (["operator.watchNamespace={a}"], "watchNamespace"),
    (["reranker.engineArgs.maxBatchTokenz=1"], "maxBatchTokenz"),
])
def test_unknown_key_fails_with_the_key_named(render_error, sets, key):
    err = render_error(sets=NO_CRD + sets)
    assert key in err and "additional properties" in err


def test_typo_in_a_values_file_fails_with_the_key_named(render_error, tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("embedding:\n  acelerator: hopper\n")
    err = render_error(files=[f], sets=NO_CRD)
    assert "acelerator" in err


def test_unknown_accelerator_is_refused_by_the_schema(render_error):
    err = render_error(sets=NO_CRD + ["embedding.accelerator=volta"])
    assert "/embedding/accelerator" in err


# --- names ------------------------------------------------------------------------------------------

def test_names_are_truncated_to_63_characters(render):
    release = "a-release-name-that-is-long-enough-to-overflow-the-dns-limit-xyz"[:53]
    out = render(release=release, sets=NO_CRD)
    for obj in out.docs:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
        assert not obj["metadata"]["name"].endswith("-")


def test_name_overrides(render):
    out = render(sets=NO_CRD + ["fullnameOverride=emb", "embedding.name=search-embed"])
    assert out.names("ModelService") == ["emb-reranker", "search-embed"]
    assert out.names("Deployment") == ["emb-gateway", "emb-operator"]


# --- helm test pod -----------------------------------------------------------------------------------

def test_helm_test_pod_calls_each_health_endpoint(render):
    out = render(sets=NO_CRD + ["reranker.port=9000"])
    (pod,) = out.kinds("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pod["spec"]["containers"][0]["args"]
    assert "http://rel-embedding-images-embedding.models.svc.cluster.local:8080/health" in args
    assert "http://rel-embedding-images-reranker.models.svc.cluster.local:9000/health" in args
    image = pod["spec"]["containers"][0]["image"]
    assert ":" in image and not image.endswith(":latest")


# --- CRD ---------------------------------------------------------------------------------------------

CRD_NAME = "modelservices.serving.embedding-images.io"
CACHE_CRD_NAME = "modelcaches.serving.embedding-images.io"


def test_the_crds_are_in_crds_and_a_render_holds_each_once(render):
    """crds/ (Helm creates it before rendering, and never deletes it) is the one copy: a render
    with --include-crds (Argo CD's default) holds each CRD once, as generated; the templates add none
    on an install."""
    assert render().kinds("CustomResourceDefinition") == []
    crds = render(extra=["--include-crds"]).kinds("CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == [CACHE_CRD_NAME, CRD_NAME]
    for crd in crds:
        source = yaml.safe_load((CHART / "crds" / f"{crd['spec']['names']['plural']}.yaml").read_text())
        assert crd == source


def test_an_upgrade_that_finds_no_crd_renders_it_from_templates_and_keeps_it(render):
    """A release from before a CRD existed gets it on upgrade (Helm installs crds/ on the first
    install only): from crds/, kept on uninstall unless crds.keep is false, none with crds.enabled
    false. (A release of the earlier layout that owns its CRDs keeps rendering them the same way;
    tests/cluster covers that, it needs the cluster's lookup.)"""
    upgrade = ["--is-upgrade"]
    crd = render(extra=upgrade).get("CustomResourceDefinition", CRD_NAME)
    source = yaml.safe_load((CHART / "crds" / "modelservices.yaml").read_text())
    assert crd["spec"] == source["spec"], "the template must wrap crds/modelservices.yaml, not a copy"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    crd = render(sets=["crds.keep=false"], extra=upgrade).get("CustomResourceDefinition", CRD_NAME)
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    assert render(sets=["crds.enabled=false"], extra=upgrade).kinds("CustomResourceDefinition") == []


# --- NOTES -------------------------------------------------------------------------------------------

def install_notes(helm, *sets: str) -> str:
    import subprocess

    from .conftest import ROOT
    cmd = [str(helm), "install", "rel", str(CHART), "-n", "models", "--dry-run=client", "--set", "crds.enabled=false"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"KUBECONFIG": "/nonexistent", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_notes_give_each_endpoint_and_the_next_commands(helm):
    notes = install_notes(helm, "reranker.port=9000")
    assert "http://rel-embedding-images-embedding.models.svc.cluster.local:8080" in notes
    assert "http://rel-embedding-images-reranker.models.svc.cluster.local:9000" in notes
    assert "kubectl get msvc -n models" in notes
    assert "kubectl port-forward -n models service/rel-embedding-images-reranker 18081:9000" in notes
    assert "helm test rel -n models" in notes


def test_notes_without_the_operator_point_at_deployments(helm):
    notes = install_notes(helm, "operator.enabled=false", "reranker.enabled=false")
    assert "kubectl get msvc" not in notes
    assert "kubectl get deployments,services -n models -l app.kubernetes.io/instance=rel" in notes
    assert "reranker" not in notes.split("Next steps:")[0]


# --- ModelServices: release resources, whatever the cluster serves at render time ----------------

MS_API = "serving.embedding-images.io/v1alpha1/ModelService"
CACHE_API = "serving.embedding-images.io/v1alpha1/ModelCache"


def test_modelservices_and_modelcaches_are_release_resources_whatever_is_served(render):
    """No hook, and the same objects whether or not the render sees the kinds served (crds/ makes
    them served before Helm renders an install; a GitOps render sees nothing)."""
    values = {"embedding": {"modelCache": {"enabled": True, "size": "1Gi"}}}
    unserved = render(values=values, sets=NO_CRD)
    served = render(values=values, sets=NO_CRD, extra=["--api-versions", MS_API, "--api-versions", CACHE_API])
    for kind in ("ModelService", "ModelCache"):
        assert unserved.kinds(kind) == served.kinds(kind) and unserved.kinds(kind)
        for obj in unserved.kinds(kind):
            assert not any(k.startswith("helm.sh/hook") for k in obj["metadata"].get("annotations", {}))


# --- the gateway -----------------------------------------------------------------------------------

GW = "rel-embedding-images-gateway"
GW_SA = ("models", GW)
# What the gateway needs: (verb, group, resource), and what it must never be able to do.
GW_NEEDS = [("get", "serving.embedding-images.io", "modelservices"),
            ("list", "serving.embedding-images.io", "modelservices"),
            ("watch", "serving.embedding-images.io", "modelservices"),
            ("get", "serving.embedding-images.io", "modelservices/scale"),
            ("patch", "serving.embedding-images.io", "modelservices/scale"),
            ("list", "discovery.k8s.io", "endpointslices"),
            ("watch", "discovery.k8s.io", "endpointslices")]
GW_NEVER = [("patch", "serving.embedding-images.io", "modelservices"),
            ("delete", "serving.embedding-images.io", "modelservices"),
            ("update", "serving.embedding-images.io", "modelservices/scale"),
            ("patch", "serving.embedding-images.io", "modelservices/status"),
            ("get", "", "secrets"), ("list", "", "secrets"), ("list", "", "pods"), ("create", "", "pods"),
            ("patch", "apps", "deployments"), ("patch", "apps", "deployments/scale"),
            ("patch", "discovery.k8s.io", "endpointslices"), ("list", "", "services")]


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def test_gateway_is_on_with_the_operator_two_replicas_behind_a_service_and_a_pdb(render):
    out = render(sets=NO_CRD)
    dep = out.get("Deployment", GW)
    assert dep["spec"]["replicas"] == 2
    c = container(dep)
    assert c["image"] == "ghcr.io/embedding-images/gateway:0.1.0" and c["command"] == ["python", "-m", "gateway"]
    env = env_of(c)
    assert env["GATEWAY_NAMESPACES"] == "models" and env["GATEWAY_PORT"] == "8080"
    assert env["GATEWAY_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert (c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]) == ("/health", "/ready")
    assert pod_spec(dep)["serviceAccountName"] == GW
    service = out.get("Service", GW)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    pdb = out.get("PodDisruptionBudget", GW)
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"] == dep["spec"]["selector"]


def test_gateway_follows_the_operator_unless_told_and_cannot_run_without_it(render, render_error):
    assert render(sets=PLAIN).kinds("Deployment") and not [
        d for d in render(sets=PLAIN).kinds("Deployment") if d["metadata"]["name"] == GW]
    out = render(sets=NO_CRD + ["gateway.enabled=false"])
    assert out.names("Deployment") == ["rel-embedding-images-operator"]
    assert not [d for d in out.docs if d["metadata"]["name"] == GW]
    assert "gateway.enabled=true needs operator.enabled=true" in render_error(sets=PLAIN + ["gateway.enabled=true"])


@pytest.mark.parametrize("verb, group, resource", GW_NEEDS)
def test_gateway_may_read_models_and_endpoints_and_scale_only_where_the_operator_serves(render, verb, group, resource):
    out = render(sets=NO_CRD)
    assert may(out, verb, group, resource, "models", sa=GW_SA)
    for namespace in ("kube-system", "default", "team-a"):
        assert not may(out, verb, group, resource, namespace, sa=GW_SA), f"{verb} {resource} in {namespace}"
    out = render(values={"operator": {"watchNamespaces": ["team-a", "team-b"]}}, sets=NO_CRD)
    assert may(out, verb, group, resource, "team-a", sa=GW_SA) and may(out, verb, group, resource, "team-b", sa=GW_SA)
    assert not may(out, verb, group, resource, "models", sa=GW_SA)
    assert env_of(container(out.get("Deployment", GW)))["GATEWAY_NAMESPACES"] == "team-a,team-b"
    out = render(sets=NO_CRD + ["operator.clusterWide=true"])
    assert may(out, verb, group, resource, "team-z", sa=GW_SA)
    assert out.names("ClusterRole") == [GW, "rel-embedding-images-operator"]
    assert env_of(container(out.get("Deployment", GW)))["GATEWAY_NAMESPACES"] == "*"


@pytest.mark.parametrize("sets", [[], ["operator.clusterWide=true"]], ids=["namespaced", "cluster-wide"])
@pytest.mark.parametrize("verb, group, resource", GW_NEVER)
def test_gateway_may_not_write_models_or_read_secrets_pods_or_workloads(render, sets, verb, group, resource):
    out = render(sets=NO_CRD + sets)
    assert not may(out, verb, group, resource, "models", sa=GW_SA)


def test_gateway_rbac_is_exactly_the_three_rules(render):
    for sets in ([], ["operator.clusterWide=true"]):
        out = render(sets=NO_CRD + sets)
        [role] = [r for r in out.kinds("Role") + out.kinds("ClusterRole") if r["metadata"]["name"] == GW]
        assert rules_of(role) == {"modelservices": {"get", "list", "watch"}, "modelservices/scale": {"get", "patch"},
                                  "endpointslices": {"get", "list", "watch"}}


def operator_network_policy(out) -> "NetworkPolicyDefaults":
    """The NetworkPolicy defaults the operator's command line gives it."""
    from modelservice.__main__ import parse_args
    from modelservice.placement.builders import NetworkPolicyDefaults

    (container,) = out.get("Deployment", "rel-embedding-images-operator")["spec"]["template"]["spec"]["containers"]
    args = parse_args(container["args"])
    return NetworkPolicyDefaults(args.network_policy, args.network_policy_same_namespace, args.network_policy_peers)


def test_with_the_operator_every_modelservice_gets_the_policy_not_only_the_charts(render):
    """networkPolicy.enabled turns on the operator's default, so ModelServices made with kubectl
    get one too; the chart renders none of the models' policies itself (the operator owns them)."""
    assert not operator_network_policy(render(sets=NO_CRD)).enabled
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    extra = {"ipBlock": {"cidr": "10.0.0.0/8"}}
    out = render(values={"networkPolicy": {"enabled": True, "metricsScraper": scraper, "extraIngressFrom": [extra]}},
                 sets=NO_CRD)
    defaults = operator_network_policy(out)
    assert defaults.enabled and defaults.allow_same_namespace
    assert list(defaults.peers[2:]) == [scraper, extra]
    assert out.names("NetworkPolicy") == [GW]
    defaults = operator_network_policy(render(values={"networkPolicy": {"enabled": True, "allowSameNamespace": False}},
                                              sets=NO_CRD))
    assert not defaults.allow_same_namespace
    assert defaults.peers[2]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "test", \
        "the helm test pod still reaches the models"


def test_gateway_networkpolicy_admits_its_clients_and_the_models_admit_the_gateway(render):
    out = render(sets=NO_CRD + ["networkPolicy.enabled=true"])
    policy = out.get("NetworkPolicy", GW)
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    operator = operator_pods(out)
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}],
                                          "from": [{"podSelector": {}}, operator]}]
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}
    out = render(values={"networkPolicy": {"enabled": True, "allowSameNamespace": False, "extraIngressFrom": [peer]}},
                 sets=NO_CRD)
    assert out.get("NetworkPolicy", GW)["spec"]["ingress"][0]["from"] == [operator, peer]
    gateway_pods = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "models"}},
                    "podSelector": {"matchLabels": out.get("Deployment", GW)["spec"]["selector"]["matchLabels"]}}
    assert gateway_pods in operator_network_policy(out).peers, "every model's policy admits the gateway"
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    out = render(values={"networkPolicy": {"enabled": True, "allowSameNamespace": False, "metricsScraper": scraper}},
                 sets=NO_CRD)
    assert out.get("NetworkPolicy", GW)["spec"]["ingress"][0]["from"] == [operator, scraper], \
        "the scraper reads the gateway's /metrics"
    # No other peer: the operator alone, whose autoscaler reads the requests the gateway holds.
    out = render(values={"networkPolicy": {"enabled": True, "allowSameNamespace": False}}, sets=NO_CRD)
    assert out.get("NetworkPolicy", GW)["spec"]["ingress"][0]["from"] == [operator]


def operator_pods(out) -> dict:
    """The operator's pods as a NetworkPolicyPeer: its Deployment's selector, in the release namespace."""
    labels = out.get("Deployment", "rel-embedding-images-operator")["spec"]["selector"]["matchLabels"]
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "models"}},
            "podSelector": {"matchLabels": labels}}


def test_the_models_policies_admit_the_operators_autoscaler(render):
    """The autoscaler reads every model pod's /metrics: the operator's peers (every model policy)
    admit its pods, after the gateway's."""
    out = render(sets=NO_CRD + ["networkPolicy.enabled=true"])
    peers = operator_network_policy(out).peers
    assert peers[1] == operator_pods(out)
    assert operator_pods(out)["podSelector"]["matchLabels"].items() <= \
        pod_spec_labels(out.get("Deployment", "rel-embedding-images-operator")).items()
    out = render(sets=NO_CRD + ["networkPolicy.enabled=true", "gateway.enabled=false"])
    assert operator_network_policy(out).peers[0] == operator_pods(out), "without the gateway, the operator first"


def pod_spec_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def gateway_source(out) -> tuple[str | None, str | None]:
    """--gateway-namespace and --gateway-selector of the operator's command line."""
    from modelservice.__main__ import parse_args

    args = parse_args(container(out.get("Deployment", "rel-embedding-images-operator"))["args"])
    return args.gateway_namespace, args.gateway_selector


def selects(selector: str, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (term.split("=", 1) for term in selector.split(",")))


@pytest.mark.parametrize("values", [{}, {"operator": {"watchNamespaces": ["team-a"]}},
                                    {"operator": {"clusterWide": True}}], ids=["release", "elsewhere", "cluster"])
def test_the_operator_reads_the_gateway_pods_for_autoscaling(render, values):
    """With the gateway, the operator is told where its pods are (their selector, in the release
    namespace) and may list pods there, whichever namespaces it serves; it selects exactly them."""
    out = render(values=values, sets=NO_CRD)
    namespace, selector = gateway_source(out)
    assert namespace == "models"
    assert selects(selector, pod_spec_labels(out.get("Deployment", GW)))
    others = [d for d in out.kinds("Deployment") if d["metadata"]["name"] != GW]
    assert others and not any(selects(selector, pod_spec_labels(d)) for d in others)
    assert may(out, "list", "", "pods", "models")
    assert not may(out, "get", "", "pods", "models") and not may(out, "patch", "", "pods", "models")
    out = render(values=values, sets=NO_CRD + ["gateway.enabled=false"])
    assert gateway_source(out) == (None, None)
    if values:   # the release namespace is not served: nothing there without the gateway
        assert not may(out, "list", "", "pods", "models") or values["operator"].get("clusterWide")


def test_gateway_api_keys_come_from_a_mounted_secret(render):
    out = render(sets=NO_CRD + ["gateway.apiKeys.existingSecret=gw-keys"])
    dep = out.get("Deployment", GW)
    c = container(dep)
    assert env_of(c)["GATEWAY_API_KEYS_FILE"] == "/etc/gateway/api-keys/keys"
    assert {"name": "api-keys", "mountPath": "/etc/gateway/api-keys", "readOnly": True} in c["volumeMounts"]
    assert {"name": "api-keys", "secret": {"secretName": "gw-keys", "items": [{"key": "keys", "path": "keys"}]}} \
        in pod_spec(dep)["volumes"]
    assert "GATEWAY_API_KEYS_FILE" not in env_of(container(render(sets=NO_CRD).get("Deployment", GW)))


def test_gateway_rolls_when_its_settings_or_scope_change(render):
    def checksum(*sets):
        return render(sets=NO_CRD + list(sets)).get("Deployment", GW)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    base = checksum()
    assert checksum("gateway.scaleFromZeroTimeout=60") != base
    assert checksum("operator.watchNamespaces={team-a}") != base
    assert checksum("reranker.replicas=3") == base


# --- model cache ---------------------------------------------------------------------------------

CACHED = {"modelCache": {"enabled": True, "size": "20Gi"}}


def test_operator_runs_downloads_from_its_own_image_and_hub(render):
    args = container(render(sets=NO_CRD).get("Deployment", "rel-embedding-images-operator"))["args"]
    assert "--downloader-image=ghcr.io/embedding-images/operator:0.1.0" in args
    assert not [a for a in args if a.startswith("--hf-endpoint")]
    out = render(values={"operator": {"hfEndpoint": "https://hub.example", "image": {"digest": "sha256:" + "a" * 64}}},
                 sets=NO_CRD)
    args = container(out.get("Deployment", "rel-embedding-images-operator"))["args"]
    assert "--hf-endpoint=https://hub.example" in args
    assert f"--downloader-image=ghcr.io/embedding-images/operator@sha256:{'a' * 64}" in args


def test_model_cache_with_the_operator_is_a_modelcache_named_in_the_modelservice(render):
    values = {"reranker": {"revision": "v2", "hfTokenSecretRef": {"name": "hf"}, **CACHED}}
    out = render(values=values, sets=NO_CRD)
    name = "rel-embedding-images-reranker"
    cache = out.get("ModelCache", name)
    assert cache["spec"] == {"model": "Qwen/Qwen3-Reranker-0.6B", "revision": "v2", "size": "20Gi",
                             "accessMode": "ReadWriteOnce", "retention": "Keep", "hfTokenSecretRef": {"name": "hf"}}
    spec = out.get("ModelService", name)["spec"]
    assert spec["cache"]["modelCache"] == name
    assert "revision" not in spec and "hfTokenSecretRef" not in spec, "the download's, not the pods'"
    assert out.names("ModelCache") == [name]
    assert "annotations" not in cache["metadata"], "a release resource, never a hook"
    served = render(values=values, sets=NO_CRD, extra=["--api-versions", "serving.embedding-images.io/v1alpha1/ModelCache"])
    assert "annotations" not in served.get("ModelCache", name)["metadata"]


def test_model_cache_without_the_operator_is_release_resources_and_the_pods_wait_for_the_download(render):
    """No hook and no lookup: the claim (kept by Helm), the download Job and the Deployment, whose
    pods wait in an init container until the revision is complete on the volume."""
    out = render(values={"embedding": {**CACHED, "revision": "v1.0"}}, sets=PLAIN)
    name = "rel-embedding-images-embedding"
    claim = out.get("PersistentVolumeClaim", f"modelcache-{name}")["metadata"]["annotations"]
    assert claim == {"helm.sh/resource-policy": "keep"}
    (job,) = out.kinds("Job")
    assert job["metadata"]["name"].startswith(f"{name}-") and len(job["metadata"]["name"]) == len(name) + 11
    assert "annotations" not in job["metadata"]
    pod = out.get("Deployment", name)["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]
    assert wait["command"] == ["python", "-m", "modelservice.cache.download"]
    assert wait["args"] == ["--model", "BAAI/bge-small-en-v1.5", "--revision", "v1.0", "--dir", "/models", "--wait"]
    assert wait["volumeMounts"] == [{"name": "models", "mountPath": "/models", "readOnly": True}]
    assert wait["image"] == job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert "initContainers" not in out.get("Deployment", "rel-embedding-images-reranker")["spec"]["template"]["spec"]


def test_a_new_revision_or_image_is_a_new_download_job(render):
    """A Job's pod template cannot change: whatever changes its pod names a new Job (Helm deletes
    the old one), and the same values name the same Job."""
    def job_name(values, *sets):
        (job,) = render(values=values, sets=[*PLAIN, *sets]).kinds("Job")
        return job["metadata"]["name"]

    base = job_name({"embedding": CACHED})
    assert job_name({"embedding": CACHED}) == base
    assert job_name({"embedding": {**CACHED, "revision": "v2"}}) != base
    assert job_name({"embedding": CACHED}, "operator.image.tag=9.9.9") != base
    assert job_name({"embedding": CACHED}, "operator.hfEndpoint=https://hub.example") != base


@pytest.mark.parametrize("values, message", [
    ({"embedding": {"modelCache": {"enabled": True}}}, "embedding.modelCache.enabled=true needs embedding.modelCache.size"),
    ({"embedding": {**CACHED, "cache": {"existingClaim": "mine"}}},
     'embedding.modelCache.enabled=true and embedding.cache.existingClaim="mine": set one of them'),
    ({"embedding": {**CACHED, "model": "local-model"}}, "needs a Hugging Face model id (org/name) in embedding.model"),
    ({"embedding": {**CACHED, "name": "e" * 53}}, "a ModelCache name has at most 52"),
    ({"operator": {"enabled": False}, "embedding": {"modelCache": {**CACHED["modelCache"], "retention": "DeleteWhenUnused"}}},
     "embedding.modelCache.retention=DeleteWhenUnused needs the operator"),
])
def test_model_cache_values_it_cannot_take_fail_naming_them(render_error, values, message):
    assert message in render_error(values=values, sets=NO_CRD)


def test_model_cache_size_must_be_a_quantity(render_error):
    err = render_error(values={"embedding": {"modelCache": {"enabled": True, "size": "lots"}}}, sets=NO_CRD)
    assert "modelCache/size" in err or "modelCache.size" in err


def test_model_cache_pins_a_reranker_revision(render):
    out = render(values={"reranker": {"revision": "v2", **CACHED}}, sets=PLAIN)
    env = {e["name"]: e.get("value") for e in container(out.get("Deployment", "rel-embedding-images-reranker"))["env"]}
    assert env["RERANKER_MODEL"] == "/models/models/Qwen--Qwen3-Reranker-0.6B/v2" and env["HF_HUB_OFFLINE"] == "1"
