"""The operator's Deployment, Service and NetworkPolicy, as a user would inspect them with kubectl
get -o yaml.

Golden files (tests/unit/operator_golden/*.yaml: input, Deployment, Service) pin the full objects
for a GPU TEI, a CPU reranker and a GPU-product TEI with scheduling constraints (node selector,
tolerations, affinity, runtime class); property tests check the invariants that keep pods
on hardware their image runs on, for any spec.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from modelservice.api.models import ACCELERATORS, parse_modelservice, parse_spec
from modelservice.placement.plan import build_plan
from modelservice.placement.builders import (NetworkPolicyDefaults, build_children, build_deployment, build_endpoint,
                                    build_network_policy, build_selector, build_service, drifted)
from modelservice.placement.variants import load_table

GOLDEN = Path(__file__).parent / "operator_golden"
TABLE = load_table()


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.yaml")), ids=lambda p: p.stem)
def test_golden_objects(path):
    body, deployment, service = yaml.safe_load_all(path.read_text())
    built_deployment, built_service = build_children(body)
    assert built_deployment == deployment
    assert built_service == service


def container(deployment):
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def body(name="m", namespace="ns", labels=None, **spec):
    meta = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {"metadata": meta, "spec": spec}


def test_tei_binds_every_address_and_gets_its_flags():
    ms = body(task="embed", model="BAAI/bge-small-en-v1.5", accelerator="cpu",
              engineArgs={"maxBatchTokens": 2048, "maxClientBatchSize": 8, "pooling": "mean",
                          "autoTruncate": False, "payloadLimit": 4000000})
    args = container(build_children(ms).deployment)["args"]
    # TEI would otherwise read HOSTNAME (the pod name) and bind to it only
    assert args[args.index("--hostname") + 1] == "0.0.0.0"
    assert args[args.index("--port") + 1] == "8080"
    assert args[args.index("--model-id") + 1] == "BAAI/bge-small-en-v1.5"
    assert args[args.index("--max-batch-tokens") + 1] == "2048"
    assert args[args.index("--pooling") + 1] == "mean"
    assert args[args.index("--payload-limit") + 1] == "4000000"
    assert "--auto-truncate" not in args and "--revision" not in args
    assert container(build_children(ms).deployment)["image"] == "ghcr.io/huggingface/text-embeddings-inference:cpu-1.9"


def test_image_override_and_user_env_come_last():
    ms = body(task="embed", model="m", accelerator="ada", image="registry.example/tei:mine",
              env=[{"name": "RUST_LOG", "value": "debug"}])
    c = container(build_children(ms).deployment)
    assert c["image"] == "registry.example/tei:mine"
    assert c["env"][-1] == {"name": "RUST_LOG", "value": "debug"}


def test_service_exposes_spec_port_to_the_named_container_port():
    ms = body(task="rerank", model="Qwen/Qwen3-Reranker-0.6B", accelerator="cpu", port=9000)
    service = build_children(ms).service
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}]
    assert container(build_children(ms).deployment)["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert build_endpoint(parse_modelservice(ms)) == "http://m.ns.svc.cluster.local:9000"


def test_modelservice_labels_reach_the_pods_but_never_the_selector():
    ms = body(labels={"app.kubernetes.io/instance": "release", "app.kubernetes.io/managed-by": "Helm",
                      "team": "search"}, task="embed", model="m", accelerator="cpu")
    deployment = build_children(ms).deployment
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["team"] == "search" and pod_labels["app.kubernetes.io/instance"] == "release"
    assert pod_labels["app.kubernetes.io/managed-by"] == "embedding-images-operator"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"serving.embedding-images.io/modelservice": "m"}
    assert selector == build_children(ms).service["spec"]["selector"]
    assert build_selector("m") == "serving.embedding-images.io/modelservice=m"


def test_restricted_security_and_writable_cache_and_tmp():
    deployment = build_children(body(task="embed", model="m", accelerator="cpu")).deployment
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not c["securityContext"]["allowPrivilegeEscalation"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/data": "cache", "/tmp": "tmp"}
    assert {v["name"] for v in pod["volumes"]} == {"cache", "tmp"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # a model download may take long: the startup probe allows at least 15 minutes
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 900


def test_cpu_pods_get_no_gpu_and_no_gpu_toleration():
    pod = build_children(body(task="embed", model="m", accelerator="cpu")).deployment["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in str(container({"spec": {"template": {"spec": pod}}}).get("resources", {}))


# Property tests over specs ---------------------------------------------------------------------

gpu_accelerators = [a for a in ACCELERATORS if a not in ("auto", "cpu")]
specs = st.fixed_dictionaries(
    {"task": st.sampled_from(["embed", "rerank"]),
     "model": st.sampled_from(["BAAI/bge-small-en-v1.5", "Qwen/Qwen3-Reranker-0.6B", "BAAI/bge-reranker-base"]),
     "accelerator": st.sampled_from([*gpu_accelerators, "auto"])},
    optional={
        "gpu": st.fixed_dictionaries({}, optional={"count": st.integers(0, 4),
                                                   "product": st.sampled_from(sorted(TABLE.products))}),
        "replicas": st.integers(0, 5),
        "nodeSelector": st.dictionaries(st.sampled_from(["pool", "nvidia.com/gpu.product"]),
                                        st.sampled_from(["a", "b"]), max_size=2),
        "tolerations": st.lists(st.fixed_dictionaries({"key": st.sampled_from(["team", "nvidia.com/gpu"]),
                                                       "operator": st.just("Exists")}), max_size=2),
        "resources": st.fixed_dictionaries({}, optional={"limits": st.fixed_dictionaries({"memory": st.just("4Gi")})}),
    })


def _buildable(spec: dict):
    """The plan for a spec, or None when the spec is one the operator refuses."""
    from pydantic import ValidationError
    from modelservice.placement.plan import PlanError
    try:
        return build_plan(parse_spec(spec))
    except (PlanError, ValidationError):
        return None


@settings(max_examples=300, deadline=None)
@given(specs)
def test_gpu_pods_always_get_toleration_gpus_and_pinning_that_match_their_image(spec):
    plan = _buildable(spec)
    assume(plan is not None)
    ms = parse_modelservice({"metadata": {"name": "m", "namespace": "ns"}, "spec": spec})
    deployment = build_deployment(ms, plan)
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    variant = TABLE.by_name(plan.variant)
    assert variant.gpu
    # the GPU taint is tolerated and GPUs are requested, as many as asked (at least one)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    wanted = (spec.get("gpu") or {}).get("count") or 1
    assert c["resources"]["limits"]["nvidia.com/gpu"] == wanted
    # the pods are pinned to nodes whose GPUs the image was built for
    selector = pod["nodeSelector"]
    if "nvidia.com/gpu.compute.major" in selector:
        capability = f'{selector["nvidia.com/gpu.compute.major"]}.{selector["nvidia.com/gpu.compute.minor"]}'
    else:
        capability = TABLE.product_capability(selector["nvidia.com/gpu.product"])
    assert capability in variant.compute_capabilities
    expected_tag = variant.tei_tag if plan.engine == "tei" else variant.reranker_tag
    assert c["image"].endswith(":" + expected_tag)
    # the Service selects exactly these pods
    service = build_service(ms)
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert deployment["spec"]["replicas"] == spec.get("replicas", 1)


def test_reranker_env_is_what_the_reranker_service_reads():
    """Every RERANKER_* variable the operator sets is a setting of the reranker service, and the
    service reads back the values the spec asked for."""
    from reranker.settings import Settings

    ms = body(task="rerank", model="Qwen/Qwen3-Reranker-0.6B", accelerator="ampere-80",
              engineArgs={"maxLength": 4096, "maxBatchTokens": 16384, "maxDocuments": 200,
                          "dtype": "bfloat16", "instruction": "Find the answer", "promptCacheTokens": 2048})
    env = {e["name"]: e["value"] for e in container(build_children(ms).deployment)["env"] if "value" in e}
    ours = {k for k in env if k.startswith("RERANKER_")}
    fields = {f"RERANKER_{name.upper()}" for name in Settings.model_fields}
    assert ours <= fields, f"unknown to the reranker service: {sorted(ours - fields)}"
    settings = Settings(_env_file=None, **{k.removeprefix("RERANKER_").lower(): v for k, v in env.items()
                                           if k in ours})
    assert (settings.model, settings.host, settings.port, settings.device) == (
        "Qwen/Qwen3-Reranker-0.6B", "0.0.0.0", 8000, "cuda")
    assert (settings.max_length, settings.batch_tokens, settings.max_documents, settings.dtype,
            settings.instruction, settings.prompt_cache_tokens) == (
        4096, 16384, 200, "bfloat16", "Find the answer", 2048)


# --- NetworkPolicy ---------------------------------------------------------------------------------

GATEWAY = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "models"}},
           "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}
SCRAPER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}


def policy(defaults=NetworkPolicyDefaults(), **spec):
    return build_network_policy(parse_modelservice(body(task="rerank", model="m", accelerator="cpu", **spec)),
                                defaults)


def test_no_network_policy_unless_the_spec_or_the_operators_default_says_so():
    assert policy() is None
    assert policy(networkPolicy={}) is None
    assert policy(NetworkPolicyDefaults(enabled=True), networkPolicy={"enabled": False}) is None
    assert policy(networkPolicy={"enabled": True}) is not None
    assert policy(NetworkPolicyDefaults(enabled=True)) is not None


def test_network_policy_admits_only_the_named_sources_to_the_model_port():
    """Ingress only, the port named http only, from: the namespace, the operator's peers, then the
    ModelService's own, in that order; it selects the pods the Deployment runs."""
    extra = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
    built = policy(NetworkPolicyDefaults(enabled=True, peers=(GATEWAY, SCRAPER)),
                   networkPolicy={"extraIngressFrom": [extra]})
    deployment = build_deployment(parse_modelservice(body(task="rerank", model="m", accelerator="cpu")),
                                  build_plan(parse_spec({"task": "rerank", "model": "m", "accelerator": "cpu"})))
    assert built == {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "m", "namespace": "ns", "labels": deployment["metadata"]["labels"]},
        "spec": {"podSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
                 "policyTypes": ["Ingress"],
                 "ingress": [{"ports": [{"port": "http", "protocol": "TCP"}],
                              "from": [{"podSelector": {}}, GATEWAY, SCRAPER, extra]}]}}
    assert "egress" not in built["spec"]


def test_same_namespace_is_the_operators_default_and_the_spec_wins():
    defaults = NetworkPolicyDefaults(enabled=True, allow_same_namespace=False, peers=(GATEWAY,))
    assert policy(defaults)["spec"]["ingress"][0]["from"] == [GATEWAY]
    assert policy(defaults, networkPolicy={"allowSameNamespace": True})["spec"]["ingress"][0]["from"] == [
        {"podSelector": {}}, GATEWAY]
    assert policy(NetworkPolicyDefaults(enabled=True), networkPolicy={"allowSameNamespace": False}) == policy(
        NetworkPolicyDefaults(enabled=True, allow_same_namespace=False))


def test_a_policy_without_sources_admits_nothing():
    """An ingress rule with an empty `from` would admit every source: no source, no rule."""
    built = policy(networkPolicy={"enabled": True, "allowSameNamespace": False})
    assert built["spec"] == {"podSelector": {"matchLabels": {"serving.embedding-images.io/modelservice": "m"}},
                             "policyTypes": ["Ingress"]}
    live = {"metadata": built["metadata"], "spec": {**built["spec"], "ingress": [{"from": [{"podSelector": {}}]}]}}
    assert drifted(live, built), "a rule added by hand must be taken back"
    assert not drifted({"metadata": built["metadata"], "spec": dict(built["spec"])}, built)


def test_a_peer_with_empty_selector_terms_is_in_sync_as_the_api_stores_it():
    """The API drops a selector's empty matchLabels ({} stays, meaning every namespace or pod):
    a policy built from such a peer must not look drifted next to what the API stored, or the
    resync would re-apply it at every interval."""
    peer = {"namespaceSelector": {"matchLabels": {}}, "podSelector": {"matchLabels": {"app": "client"},
                                                                       "matchExpressions": []}}
    built = policy(networkPolicy={"enabled": True, "allowSameNamespace": False, "extraIngressFrom": [peer]})
    as_stored = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}
    assert built["spec"]["ingress"][0]["from"] == [as_stored]
    live = {"metadata": built["metadata"], "spec": {**built["spec"], "ingress": [
        {"ports": [{"port": "http", "protocol": "TCP"}], "from": [as_stored]}]}}
    assert not drifted(live, built)


def test_reranker_pods_outlast_the_services_shutdown():
    """The kubelet kills a pod after terminationGracePeriodSeconds: the reranker must have had
    its delay (readiness failing), its drain and the time to answer what is left 503 by then."""
    from reranker.server import DRAIN_MARGIN_S
    from reranker.settings import Settings

    settings = Settings(_env_file=None)
    pod = build_children(body(task="rerank", model="Qwen/Qwen3-Reranker-0.6B",
                              accelerator="cpu")).deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > (
        settings.shutdown_delay + settings.shutdown_timeout + DRAIN_MARGIN_S)


@pytest.mark.parametrize("spec,memory", [
    ({"accelerator": "cpu"}, "5069Mi"),  # 3,840 MiB + 8,192 rows x 0.15 MiB
    ({"accelerator": "cpu", "engineArgs": {"maxLength": 32768}}, "8756Mi"),
    ({"accelerator": "cpu", "engineArgs": {"maxBatchTokens": 1024, "maxLength": 512}}, "3994Mi"),
    ({"accelerator": "ampere-80", "engineArgs": {"maxBatchTokens": 65536}}, "4096Mi"),
    ({"accelerator": "cpu", "resources": {"requests": {"cpu": "2"}}}, "5069Mi"),
])
def test_reranker_pods_get_the_memory_bound_as_request_and_limit(spec, memory):
    resources = container(build_children(body(task="rerank", model="Qwen/Qwen3-Reranker-0.6B",
                                              **spec)).deployment)["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == memory
    assert resources["requests"].get("cpu") == spec.get("resources", {}).get("requests", {}).get("cpu")


@pytest.mark.parametrize("own", [{"limits": {"memory": "3Gi"}}, {"requests": {"memory": "12Gi"}}])
def test_memory_the_spec_names_wins_and_tei_gets_none(own):
    reranker = container(build_children(body(task="rerank", model="Qwen/Qwen3-Reranker-0.6B",
                                             accelerator="cpu", resources=own)).deployment)
    assert reranker["resources"] == own
    tei = container(build_children(body(task="embed", model="BAAI/bge-small-en-v1.5",
                                        accelerator="cpu")).deployment)
    assert "resources" not in tei


def test_tei_on_cpu_gets_float32_its_served_name_and_a_log_filter_hiding_the_key():
    """Found with the real router (tests/service/test_tei_operator.py): a TEI built without MKL
    or ORT defaults to float16 on CPU, names the model by --model-id (a cache path) in its
    OpenAI answers, and prints --api-key in its start-up log."""
    cpu = container(build_children(body(task="embed", model="BAAI/bge-small-en-v1.5",
                                        accelerator="cpu")).deployment)
    assert cpu["args"][cpu["args"].index("--dtype") + 1] == "float32"
    # served as the ModelService's name, what the gateway routes by (not the cache's path)
    assert cpu["args"][cpu["args"].index("--served-model-name") + 1] == "m"
    log_level = next(e["value"] for e in cpu["env"] if e["name"] == "LOG_LEVEL")
    assert "text_embeddings_router=warn" in log_level
    named = container(build_children(body(task="embed", model="BAAI/bge-small-en-v1.5",
                                          accelerator="cpu", engineArgs={"dtype": "float16"})
                                     ).deployment)
    assert named["args"].count("--dtype") == 1
    assert named["args"][named["args"].index("--dtype") + 1] == "float16"
    gpu = container(build_children(body(task="embed", model="BAAI/bge-small-en-v1.5",
                                        accelerator="hopper")).deployment)
    assert "--dtype" not in gpu["args"]
