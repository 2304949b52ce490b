"""Parity: for the same values, the chart without the operator renders the Deployment, Service and
NetworkPolicy the operator builds from the ModelService the chart renders with it (and, for the
NetworkPolicy, from the defaults the chart gives the operator on its command line).

Both renders come from one values dict: operator.enabled=true gives the ModelService (the
operator's input), operator.enabled=false gives the chart's own Deployment and Service; the
operator's pure build functions (modelservice.placement.builders) turn the ModelService into theirs.
The two renderers must agree on the WHOLE objects, less the differences listed in INTENDED, each
with the reason it is meant; anything else either renderer adds, drops or changes fails here.

A model with modelCache: the operator-mode render holds a ModelCache besides the ModelService. The
operator's claim and download Job for it (modelservice.cache.builders) are compared with the chart-only
claim and Job hooks, and its Deployment is built for a plan whose cache is what the ModelService
mounts once that download completed (cache.build_cache_status, then cache.cache_mount).
"""
from __future__ import annotations

import copy
import dataclasses
import enum
import json
from typing import Any, Callable, NamedTuple

import pytest

pytestmark = pytest.mark.helm

AFFINITY = {
    "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                               "values": ["zone-a", "zone-b"]}]}]}},
    "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "embedding"}}}}]},
}

# Values that only the chart-only mode renders (values.yaml says so for each); the keys are named
# here so that INTENDED can drop exactly them.
POD_LABEL, POD_ANNOTATION, COMMON_ANNOTATION = "example.com/pod-label", "example.com/pod-note", "example.com/note"
HOSTNAME = "kubernetes.io/hostname"

INPUTS = {
    "embedding-cpu": {"embedding": {"accelerator": "cpu"}},
    "embedding-hopper": {"embedding": {"accelerator": "hopper", "engineArgs": {"defaultPrompt": "query: "}}},
    "embedding-l4-product": {"embedding": {"accelerator": "auto", "gpu": {"product": "NVIDIA-L4"}}},
    "embedding-t4-product-two-gpus": {"embedding": {"accelerator": "turing", "gpu": {"count": 2, "product": "Tesla-T4"}}},
    "embedding-ampere86-engine-args": {"embedding": {
        "accelerator": "ampere-86", "revision": "main",
        "engineArgs": {"maxBatchTokens": 4096, "maxClientBatchSize": 64, "maxConcurrentRequests": 128,
                       "pooling": "cls", "dtype": "float16", "autoTruncate": True,
                       "maxBatchRequests": 16, "payloadLimit": 4000000, "defaultPromptName": "query",
                       "servedModelName": "bge-small",
                       "apiKeySecretRef": {"name": "tei-key"}}}},
    "reranker-cpu": {"reranker": {"accelerator": "cpu"}},
    "reranker-a100": {"reranker": {"accelerator": "ampere-80", "engineArgs": {
        "maxBatchTokens": 8192, "maxLength": 4096, "dtype": "bfloat16", "maxDocuments": 500,
        "instruction": "Given a support ticket, retrieve the runbook that resolves it", "promptCacheTokens": 0,
        "servedModelName": "runbook-reranker",
        "apiKeySecretRef": {"name": "rerank-key", "key": "api-key"}}}},
    "reranker-cpu-long-passes-own-cpu": {"reranker": {
        "accelerator": "cpu", "engineArgs": {"maxBatchTokens": 16384, "maxLength": 4096},
        "resources": {"requests": {"cpu": "2"}}}},
    "reranker-cpu-own-memory-limit": {"reranker": {
        "accelerator": "cpu", "resources": {"limits": {"memory": "3Gi"}}}},
    "reranker-tei-bge-h100-product": {"reranker": {
        "model": "BAAI/bge-reranker-v2-m3", "accelerator": "auto", "gpu": {"product": "NVIDIA-H100-80GB-HBM3"}}},
    "custom-everything": {
        "commonLabels": {"team": "search"},
        "embedding": {
            "name": "embed", "replicas": 3,
            "accelerator": "ada", "port": 9090, "image": "registry.example/tei:custom",
            "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "affinity": AFFINITY,
            "env": [{"name": "RUST_LOG", "value": "debug"}],
            "hfTokenSecretRef": {"name": "hf", "key": "token"},
            "cache": {"existingClaim": "model-cache"},
            "runtimeClassName": "nvidia",
        },
        "reranker": {
            "accelerator": "blackwell-120",
            "affinity": {"podAffinity": AFFINITY["podAntiAffinity"]},
            "env": [{"name": "RERANKER_LOG_LEVEL", "value": "debug"}],
            "cache": {"sizeLimit": "20Gi"},
        },
    },
    "network-policy-namespace": {"networkPolicy": {"enabled": True}, "embedding": {"accelerator": "cpu"},
                                 "reranker": {"accelerator": "cpu"}},
    "network-policy-peers": {
        "commonLabels": {"team": "search"}, "commonAnnotations": {COMMON_ANNOTATION: "on"},
        "networkPolicy": {"enabled": True, "allowSameNamespace": False,
                          "metricsScraper": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                                             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
                          "extraIngressFrom": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                                               {"namespaceSelector": {"matchLabels": {"team": "apps"}}}]},
        "embedding": {"accelerator": "cpu"}, "reranker": {"accelerator": "cpu"}},
    # Model caches: a node named for ReadWriteOnce (as the README says to do without the operator),
    # a token, a class, an endpoint; ReadWriteMany; ReadWriteOnce on whatever node the download
    # lands; the reranker engine, whose revision only a cache can pin.
    "model-cache-embedding-one-node": {
        "commonLabels": {"team": "search"}, "commonAnnotations": {COMMON_ANNOTATION: "on"},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {"hfEndpoint": "https://hub.example.internal"},
        "embedding": {"accelerator": "cpu", "revision": "v1.0", "hfTokenSecretRef": {"name": "hf"},
                      "nodeSelector": {HOSTNAME: "node-a"},
                      "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                      "modelCache": {"enabled": True, "size": "20Gi", "storageClassName": "fast-ssd"}},
        "reranker": {"enabled": False},
    },
    "model-cache-reranker-many-nodes": {
        "embedding": {"enabled": False},
        "reranker": {"accelerator": "ampere-80", "revision": "refs/pr/3", "replicas": 2,
                     "modelCache": {"enabled": True, "size": "8Gi", "accessMode": "ReadWriteMany"}},
    },
    "model-cache-any-node": {
        "embedding": {"accelerator": "cpu", "modelCache": {"enabled": True, "size": 21474836480},
                      "cache": {"sizeLimit": "1Gi"}},
        "reranker": {"model": "BAAI/bge-reranker-v2-m3", "accelerator": "cpu",
                     "modelCache": {"enabled": True, "size": "4Gi"}},
    },
    "chart-only-values": {
        "commonAnnotations": {COMMON_ANNOTATION: "on"},
        "imagePullSecrets": [{"name": "regcred"}],
        "embedding": {"accelerator": "cpu", "autoscaling": {"enabled": True}},
        "reranker": {"accelerator": "cpu", "autoscaling": {"enabled": True}},
    },
    # Pod settings: the chart's imagePullSecrets, commonLabels and commonAnnotations (the operator's
    # defaults, on its command line) extended by each model's own (the ModelService's spec.pod).
    "pod-settings": {
        "commonLabels": {"team": "search"}, "commonAnnotations": {COMMON_ANNOTATION: "on"},
        "imagePullSecrets": [{"name": "regcred"}],
        "embedding": {"accelerator": "cpu", "podLabels": {POD_LABEL: "on", "team": "embeddings"},
                      "podAnnotations": {POD_ANNOTATION: "on", COMMON_ANNOTATION: "off"},
                      "imagePullSecrets": [{"name": "own"}, {"name": "regcred"}],
                      "priorityClassName": "serving-high", "serviceAccountName": "bucket-reader",
                      "topologySpreadConstraints": [
                          {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
                          {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                           "labelSelector": {"matchLabels": {"team": "search"}}, "minDomains": 2,
                           "nodeAffinityPolicy": "Honor", "nodeTaintsPolicy": "Ignore",
                           "matchLabelKeys": ["pod-template-hash"]}]},
        "reranker": {"accelerator": "cpu", "modelCache": {"enabled": True, "size": "4Gi"},
                     "topologySpreadConstraints": [
                         {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]},
    },
}


class Side(enum.Enum):
    """Which render an intended difference is dropped from."""

    CHART = "chart"
    OPERATOR = "operator"
    BOTH = "both"


class Intended(NamedTuple):
    """A difference between the two renders that is meant: `path` (keys from the object's root)
    is dropped from `side` of `kind` before the objects are compared, when `applies(values)`."""

    kind: str
    path: tuple[str, ...]
    side: Side
    why: str
    applies: Callable[[dict], bool] = lambda values: True


LABELS = ("metadata", "labels")
POD_LABELS = ("spec", "template", "metadata", "labels")
POD_ANNOTATIONS = ("spec", "template", "metadata", "annotations")
MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR_SELECTOR = "serving.embedding-images.io/modelservice"
CACHE_KINDS = ("Job", "PersistentVolumeClaim")


def _autoscaled(values: dict) -> bool:
    return bool(values.get("autoscaling", {}).get("enabled"))


def _pinned_by_the_download(values: dict) -> bool:
    cache = values.get("modelCache", {})
    return (bool(cache.get("enabled")) and cache.get("accessMode", "ReadWriteOnce") == "ReadWriteOnce"
            and HOSTNAME not in values.get("nodeSelector", {}))


INTENDED = (
    # Who applies the object: Helm in one mode, the operator (its field manager) in the other.
    *(Intended(kind, path + (MANAGED_BY,), Side.BOTH, "managed-by names the applier")
      for kind, path in (("Deployment", LABELS), ("Deployment", POD_LABELS), ("Service", LABELS),
                         ("NetworkPolicy", LABELS))),
    # The operator labels its children with the ModelService that owns them and selects pods by
    # that label; without the operator there is no ModelService to name.
    *(Intended(kind, path + (OPERATOR_SELECTOR,), Side.OPERATOR, "the owning ModelService's label")
      for kind, path in (("Deployment", LABELS), ("Deployment", POD_LABELS), ("Service", LABELS),
                         ("NetworkPolicy", LABELS))),
    # Each mode selects its pods by its own labels (above); a Deployment's selector is immutable,
    # so neither can move to the other's without breaking upgrades. test_each_mode_selects_its_own_pods
    # checks both selectors instead.
    Intended("Deployment", ("spec", "selector"), Side.BOTH, "each mode's own selector (immutable)"),
    Intended("Service", ("spec", "selector"), Side.BOTH, "each mode's own selector"),
    Intended("NetworkPolicy", ("spec", "podSelector"), Side.BOTH, "each mode's own pod selector"),
    # The chart's pods carry a checksum of the model's values, so that any change of them rolls
    # the pods; the operator's pod template is built from the ModelService alone, so it changes
    # whenever the pods must roll, without a checksum.
    Intended("Deployment", POD_ANNOTATIONS + ("checksum/config",), Side.CHART, "the chart's config checksum"),
    # commonAnnotations go on "every object the chart renders", and the operator's Deployment,
    # Service and policy are not the chart's (it puts them on the pods: --pod-annotations).
    Intended("Deployment", ("metadata", "annotations", COMMON_ANNOTATION), Side.CHART,
             "commonAnnotations: the chart's objects"),
    Intended("Service", ("metadata", "annotations", COMMON_ANNOTATION), Side.CHART,
             "commonAnnotations: the chart's objects"),
    Intended("NetworkPolicy", ("metadata", "annotations", COMMON_ANNOTATION), Side.CHART,
             "commonAnnotations: the chart's objects"),
    # With autoscaling, the chart leaves replicas to the HorizontalPodAutoscaler, which scales the
    # Deployment; with the operator, it scales the ModelService, whose replicas the operator copies.
    Intended("Deployment", ("spec", "replicas"), Side.BOTH, "autoscaling owns replicas", _autoscaled),
    # --- model caches: the operator's claim and download Job, the chart's hooks ---
    *(Intended(kind, path + (MANAGED_BY,), Side.BOTH, "managed-by names the applier")
      for kind, path in (("Job", LABELS), ("Job", POD_LABELS), ("PersistentVolumeClaim", LABELS))),
    # The operator labels a cache's children with their own instance (the ModelCache) and none of
    # the ModelCache's labels; the chart labels every object of the release alike.
    *(Intended(kind, path + (label,), side, why)
      for kind, path in (("Job", LABELS), ("Job", POD_LABELS), ("PersistentVolumeClaim", LABELS))
      for label, side, why in (("app.kubernetes.io/instance", Side.BOTH, "instance: the release vs the ModelCache"),
                               ("helm.sh/chart", Side.CHART, "the chart's labels"),
                               ("app.kubernetes.io/version", Side.CHART, "the chart's labels"),
                               ("team", Side.CHART, "commonLabels: the chart's objects"))),
    # Helm never deletes the chart's claim (the operator deletes its own with the ModelCache).
    Intended("PersistentVolumeClaim", ("metadata", "annotations", "helm.sh/resource-policy"), Side.CHART,
             "the chart's claim is kept"),
    # The operator creates the Deployment only once the ModelCache is complete; Helm creates it at
    # once, and its pods wait for the download in an init container.
    Intended("Deployment", ("spec", "template", "spec", "initContainers"), Side.CHART,
             "the chart's pods wait for their download", lambda values: bool(values.get("modelCache", {}).get("enabled"))),
    *(Intended(kind, ("metadata", "annotations", COMMON_ANNOTATION), Side.CHART, "commonAnnotations: the chart's objects")
      for kind in CACHE_KINDS),
    # Each names its Job after what it runs: the operator after what it fetches, the chart after the
    # whole pod (a Job's pod template cannot change, and Helm would patch it on every upgrade).
    Intended("Job", ("metadata", "name"), Side.BOTH, "the chart's Job is replaced, the operator's is per revision"),
    # ReadWriteOnce: the operator pins the pods to the node the download ran on (status.nodeName),
    # which Helm cannot know; without the operator the values name the node (README, "Model cache").
    Intended("Deployment", ("spec", "template", "spec", "nodeSelector", HOSTNAME), Side.OPERATOR,
             "the download's node, known only to the operator", _pinned_by_the_download),
)


def _drop(obj: dict, path: tuple[str, ...]) -> bool:
    """Removes obj[path[0]]...[path[-1]], and any parent it leaves empty; True when it was there."""
    parent = obj
    for key in path[:-1]:
        parent = parent.get(key)
        if not isinstance(parent, dict):
            return False
    if path[-1] not in parent:
        return False
    del parent[path[-1]]
    if not parent and len(path) > 1:
        _drop(obj, path[:-1])
    return True


def without_intended(kind: str, side: Side, obj: dict, values: dict) -> tuple[dict, set[Intended]]:
    """A copy of one render of `kind` with the intended differences dropped, and those that were
    there to drop."""
    obj = copy.deepcopy(obj)
    dropped = {d for d in INTENDED
               if d.kind == kind and d.side in (side, Side.BOTH) and d.applies(values) and _drop(obj, d.path)}
    return obj, dropped


def operator_build(ms: dict, mount=None, pod_defaults=None) -> tuple[dict, dict]:
    """The operator's Deployment and Service for a ModelService body (as the API would hand it),
    and with `mount` (a CacheMount) what it renders once its ModelCache is complete (as
    handlers.with_cache does)."""
    from modelservice.placement import builders as resources
    from modelservice.api.models import parse_modelservice
    from modelservice.placement.plan import build_plan

    parsed = parse_modelservice(ms)
    plan = build_plan(parsed.spec)
    if mount is not None:
        plan = dataclasses.replace(plan, cache=mount)
    return (resources.build_deployment(parsed, plan, pod_defaults or resources.PodDefaults()),
            resources.build_service(parsed))


def operator_pod_defaults(with_operator):
    """The operator's pod defaults that its command line in a render gives it."""
    from modelservice.placement.builders import PodDefaults

    args = operator_args(with_operator)
    return PodDefaults(image_pull_secrets=tuple(args.image_pull_secrets), labels=args.pod_labels,
                       annotations=args.pod_annotations)


def own_pods_spread(deployment: dict, values: dict) -> dict:
    """The Deployment less the labelSelector of the topology spread constraints whose values give
    none: each mode then counts its own pods, by its own (immutable) selector, which INTENDED leaves
    out; checked here before it is dropped (INTENDED's key paths cannot name list items)."""
    deployment = copy.deepcopy(deployment)
    spread = deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
    for constraint, given in zip(spread, values.get("topologySpreadConstraints", [])):
        if "labelSelector" not in given:
            assert constraint.pop("labelSelector") == deployment["spec"]["selector"], constraint
    return deployment


def operator_args(with_operator):
    """The operator's parsed command line in a render."""
    from modelservice.__main__ import parse_args

    (operator,) = [d for d in with_operator.kinds("Deployment") if d["metadata"]["name"].endswith("-operator")]
    return parse_args(operator["spec"]["template"]["spec"]["containers"][0]["args"])


def operator_network_policy(ms: dict, with_operator) -> dict | None:
    """The operator's NetworkPolicy for a ModelService, with the defaults that the operator's
    command line in the same render gives it."""
    from modelservice.api.models import parse_modelservice
    from modelservice.placement.builders import NetworkPolicyDefaults, build_network_policy

    args = operator_args(with_operator)
    defaults = NetworkPolicyDefaults(args.network_policy, args.network_policy_same_namespace, args.network_policy_peers)
    return build_network_policy(parse_modelservice(ms), defaults)


DOWNLOAD_NODE = "node-of-the-download"


def operator_cache(cache_body: dict, with_operator, user: str):
    """The operator's claim and download Job for a ModelCache body (with the image and Hub of its
    command line in the same render), and what a ModelService naming it mounts once the download
    completed: cache.build_cache_status over the complete Job and its pod, which ran where the
    Job's nodeSelector put it (DOWNLOAD_NODE when it names no node)."""
    from modelservice.cache.builders import build_cache_status, build_claim, build_download_job, cache_mount
    from modelservice.api.models import parse_modelcache

    args = operator_args(with_operator)
    assert args.downloader_image, "the chart gives the operator no --downloader-image"
    cache = parse_modelcache(cache_body)
    job = build_download_job(cache, image=args.downloader_image, hf_endpoint=args.hf_endpoint,
                             pull_secrets=tuple(args.image_pull_secrets))
    node = (cache.spec.node_selector or {}).get(HOSTNAME, DOWNLOAD_NODE)
    result = json.dumps({"commit": "0" * 40, "bytes": 1, "files": 1})
    pod = {"spec": {"nodeName": node}, "status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "download", "state": {"terminated": {"exitCode": 0, "message": result}}}]}}
    done = {**job, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    status = build_cache_status(cache, now="2026-01-01T00:00:00Z", job=done, pods=[pod], users=[user])
    mount = cache_mount(dataclasses.replace(cache, status=status))
    assert mount is not None, status
    return mount, {"Job": job, "PersistentVolumeClaim": build_claim(cache)}


def without_operator_only_peers(policy: dict, with_operator) -> dict:
    """The operator's policy less the peers that exist only with the operator, which it has first
    (after its namespace): the gateway's pods (the gateway runs only with the operator) and the
    operator's own (its autoscaler reads the pods' /metrics). The chart-only policy has neither to
    admit: an intended difference of list items, which INTENDED's key paths cannot name."""
    deployments = {d["metadata"]["name"].rsplit("-", 1)[-1]: d for d in with_operator.kinds("Deployment")}
    policy = copy.deepcopy(policy)
    peers = policy["spec"]["ingress"][0]["from"]
    index = 1 if peers[0] == {"podSelector": {}} else 0
    for component in ("gateway", "operator"):
        if component == "gateway" and "gateway" not in deployments:
            continue
        labels = deployments[component]["spec"]["selector"]["matchLabels"]
        assert peers[index]["podSelector"]["matchLabels"] == labels, (component, peers)
        del peers[index]
    return policy


class Pair(NamedTuple):
    """One model's objects in both modes, and its section of the values."""

    name: str
    values: dict
    modelservice: dict
    operator: dict[str, dict]
    chart: dict[str, dict]


def both_modes(render, values: dict):
    with_operator = copy.deepcopy(values)
    with_operator.setdefault("operator", {})["enabled"] = True
    without = copy.deepcopy(values)
    without.setdefault("operator", {})["enabled"] = False
    sets = ["crds.enabled=false"]
    return render(values=with_operator, sets=sets), render(values=without, sets=sets)


@pytest.fixture(scope="module")
def pairs(render) -> dict[str, list[Pair]]:
    """Each input's models, rendered once in both modes."""
    out = {}
    for input_name, values in INPUTS.items():
        with_operator, without = both_modes(render, values)
        modelservices = with_operator.kinds("ModelService")
        assert modelservices, input_name
        out[input_name] = []
        for ms in modelservices:
            name = ms["metadata"]["name"]
            section = "embedding" if ms["spec"]["task"] == "embed" else "reranker"
            cache_name = ms["spec"].get("cache", {}).get("modelCache")
            mount, cache_children = (operator_cache(with_operator.get("ModelCache", cache_name), with_operator, name)
                                     if cache_name else (None, {}))
            deployment, service = operator_build(ms, mount, operator_pod_defaults(with_operator))
            operator = {"Deployment": deployment, "Service": service, **cache_children}
            chart = {"Deployment": without.get("Deployment", name), "Service": without.get("Service", name)}
            if cache_name:
                (chart["Job"],) = [j for j in without.kinds("Job") if j["metadata"]["name"].startswith(f"{cache_name}-")]
                chart["PersistentVolumeClaim"] = without.get("PersistentVolumeClaim", f"modelcache-{cache_name}")
            policy = operator_network_policy(ms, with_operator)
            assert (policy is None) == (name not in without.names("NetworkPolicy")), (input_name, name)
            if policy is not None:
                operator["NetworkPolicy"] = without_operator_only_peers(policy, with_operator)
                chart["NetworkPolicy"] = without.get("NetworkPolicy", name)
            out[input_name].append(Pair(name, values.get(section, {}), ms, operator, chart))
        assert len(without.kinds("Deployment")) == len(modelservices), input_name
        caches = with_operator.kinds("ModelCache")
        assert len(without.kinds("Job")) == len(without.kinds("PersistentVolumeClaim")) == len(caches), input_name
    return out


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two objects differ, as readable paths (for the failure message only)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b))
                for d in (_differences(a.get(key), b.get(key), f"{path}.{key}") if key in a and key in b
                          else [f"{path}.{key} only {'with' if key in a else 'without'} the operator"])]
    return [] if a == b else [f"{path}: operator {a!r} != chart {b!r}"]


@pytest.mark.parametrize("input_name", sorted(INPUTS))
def test_chart_and_operator_render_the_same_objects(pairs, input_name):
    for pair in pairs[input_name]:
        for kind in pair.chart:
            op_obj, chart_obj = pair.operator[kind], pair.chart[kind]
            if kind == "Deployment":
                op_obj, chart_obj = own_pods_spread(op_obj, pair.values), own_pods_spread(chart_obj, pair.values)
            op, _ = without_intended(kind, Side.OPERATOR, op_obj, pair.values)
            chart, _ = without_intended(kind, Side.CHART, chart_obj, pair.values)
            differences = _differences(op, chart)
            assert not differences, f"{kind}/{pair.name}:\n  " + "\n  ".join(differences)


def test_every_intended_difference_is_still_one(pairs):
    """An entry of INTENDED that no input exercises would hide drift for nothing: drop it."""
    used: set[Intended] = set()
    for pair in (p for ps in pairs.values() for p in ps):
        for kind in pair.chart:
            used |= without_intended(kind, Side.OPERATOR, pair.operator[kind], pair.values)[1]
            used |= without_intended(kind, Side.CHART, pair.chart[kind], pair.values)[1]
    assert not set(INTENDED) - used, sorted(d.why for d in set(INTENDED) - used)


def test_each_mode_selects_its_own_pods(pairs):
    """The selectors INTENDED leaves out: each mode's Deployment and Service select its pods, and
    neither selector carries a label that changes with the values (selectors are immutable)."""
    for pair in (p for ps in pairs.values() for p in ps):
        for objects, expected in ((pair.operator, {OPERATOR_SELECTOR}),
                                  (pair.chart, {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                                                "app.kubernetes.io/component"})):
            deployment, service = objects["Deployment"], objects["Service"]
            pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert set(selector) == expected and selector == service["spec"]["selector"], pair.name
            assert selector.items() <= pod_labels.items(), pair.name
            if "NetworkPolicy" in objects:
                assert objects["NetworkPolicy"]["spec"]["podSelector"] == {"matchLabels": selector}, pair.name


# Spec fields the chart's ModelServices never set: fallbackToCPU needs accelerator auto, which needs the
# operator (the chart refuses it, naming the reason).
# networkPolicy: the chart's ModelServices take the operator's default, which the chart's
# networkPolicy values set (the NetworkPolicies themselves are compared above).
# autoscaling: replicas from demand are the operator's decision; without it nothing reads the
# pods' demand (the chart's own <model>.autoscaling values are a CPU HorizontalPodAutoscaler).
OPERATOR_ONLY_FIELDS = {"fallbackToCPU", "networkPolicy", "autoscaling"}


def test_parity_inputs_set_every_field_of_the_modelservice_spec(pairs):
    """A new spec field (or engine argument) fails here until an input above sets it, so the chart
    cannot silently render it differently, or not at all."""
    from modelservice.api.crd import build_crd

    (version,) = build_crd()["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    fields = set(schema["properties"]) - OPERATOR_ONLY_FIELDS
    engine_args = set(schema["properties"]["engineArgs"]["properties"])
    specs = [p.modelservice["spec"] for ps in pairs.values() for p in ps]
    set_fields = {field for spec in specs for field in spec}
    set_engine_args = {arg for spec in specs for arg in spec.get("engineArgs", {})}
    assert fields <= set_fields, f"no parity input sets {sorted(fields - set_fields)}"
    assert engine_args <= set_engine_args, f"no parity input sets engineArgs {sorted(engine_args - set_engine_args)}"


def test_parity_inputs_set_every_field_of_the_modelcache_spec(pairs, render):
    """Likewise for the ModelCache the chart renders, whose spec the chart-only claim and Job are
    built from: a new field fails here until an input sets it (or the chart maps it)."""
    from modelservice.api.crd import build_cache_crd

    (version,) = build_cache_crd()["spec"]["versions"]
    fields = set(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])
    set_fields = set()
    for input_name, values in INPUTS.items():
        if any(p.modelservice["spec"].get("cache", {}).get("modelCache") for p in pairs[input_name]):
            set_fields |= {f for c in both_modes(render, values)[0].kinds("ModelCache") for f in c["spec"]}
    # retention DeleteWhenUnused needs the operator, which the chart-only mode refuses by name.
    assert fields - {"retention"} <= set_fields, f"no parity input sets {sorted(fields - set_fields)}"


def test_parity_inputs_cover_every_variant_family_and_affinity(pairs):
    """The inputs above exercise CPU and GPU, TEI and the reranker, product and architecture, and
    affinity (which a renderer could drop without any other input noticing)."""
    chart_pods = [p.chart["Deployment"]["spec"]["template"]["spec"] for ps in pairs.values() for p in ps]
    images = {pod["containers"][0]["image"] for pod in chart_pods}
    assert any(":cpu-" in i for i in images) and any("hopper" in i for i in images)
    assert any("reranker:" in i and i.endswith("-cpu") for i in images)
    assert any("reranker:" in i and i.endswith("-cuda") for i in images)
    affinities = [pod["affinity"] for pod in chart_pods if "affinity" in pod]
    assert AFFINITY in affinities and len(affinities) == 2


def test_network_policy_inputs_make_policies_in_both_modes(pairs):
    for input_name in ("network-policy-namespace", "network-policy-peers"):
        assert all("NetworkPolicy" in pair.chart for pair in pairs[input_name]), input_name


def test_pdb_selects_the_operators_pods(render):
    """With the operator, the chart's PDB must select the pods it creates (the operator builds
    the NetworkPolicy itself, selecting them as its Deployment does)."""
    values = {"operator": {"enabled": True},
              "embedding": {"podDisruptionBudget": {"enabled": True}},
              "reranker": {"podDisruptionBudget": {"enabled": True}}}
    out = render(values=values, sets=["crds.enabled=false"])
    for ms in out.kinds("ModelService"):
        name = ms["metadata"]["name"]
        op_deploy, _ = operator_build(ms)
        pod_labels = op_deploy["spec"]["template"]["metadata"]["labels"]
        for kind, path in (("PodDisruptionBudget", ("selector",)),):
            selector = out.get(kind, name)["spec"][path[0]]["matchLabels"]
            assert selector.items() <= pod_labels.items(), f"{kind}/{name} selects {selector}, pods carry {pod_labels}"
