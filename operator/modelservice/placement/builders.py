"""The children of a ModelService, built purely: a Deployment, a ClusterIP Service and, when
turned on, an ingress NetworkPolicy.

The builders take a `models.ModelService` (the spec already validated, once per reconcile) and,
where it matters, the `plan.Plan` chosen for it; none does I/O, reads a clock or parses. `kube.py`
applies the results with server-side apply; `drifted()` tells the handlers whether a live child
still holds what was applied. The chart renders the same objects without the operator
(charts/embedding-images/templates/models/_podspec.tpl); tests/chart/test_parity.py compares the
two.

Entry point for callers that hold a ModelService body (tests, the chart's parity check):
`build_children(body, nodes)` -> Children(deployment, service); `build_network_policy(ms,
defaults)` -> the NetworkPolicy, or None when the ModelService has none.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple

from ..api.models import (
    DEFAULT_HF_TOKEN_KEY,
    MANAGER,
    SELECTOR_LABEL,
    ModelService,
    ModelServiceSpec,
    PodSettings,
    parse_modelservice,
)
from ..cache.builders import MOUNT_PATH
from .plan import GPU_RESOURCE, GPU_TOLERATION, Plan, build_plan
from .sharing import share_env, share_labels, share_pod

CACHE_PATH = "/data"
HOSTNAME_LABEL = "kubernetes.io/hostname"
TEI_PORT = 8080
TEI_CPU_DTYPE = "float32"
# TEI 1.9 logs its whole command line at start-up, the API key (--api-key / API_KEY) in clear,
# in one info line of its main module (target `text_embeddings_router`). LOG_LEVEL is TEI's
# tracing filter: that target at warn hides the line (and three other start-up info lines of the
# same module: maximum tokens, starting the backend, warming up), its HTTP server's lines
# ("Starting HTTP server", "Ready") and every other crate stay at info.
TEI_LOG_LEVEL = "info,text_embeddings_router=warn,text_embeddings_router::http=info"
RERANKER_PORT = 8000
# On SIGTERM the reranker serves on for RERANKER_SHUTDOWN_DELAY (5 s) with readiness failing, then
# drains requests in flight for up to RERANKER_SHUTDOWN_TIMEOUT (30 s), then takes up to 5 s to
# answer the rest 503 (reranker/server.py): its pods get longer than all that, and the forward pass
# under way, before the kubelet kills them.
RERANKER_GRACE_S = 50

# The reranker's memory bound (README "Reranker API"), as the pod's memory request and limit when
# the spec gives no memory of its own: on CPU, the runtime and a 0.6B model in fp32 with the
# prompt-head cache and the request bodies in flight (3,840 MiB), plus one pass of
# max(RERANKER_BATCH_TOKENS, RERANKER_MAX_LENGTH) rows at 0.15 MiB a row; on a GPU the pass is in
# GPU memory, and the host holds the runtime, the CUDA context and the weights while they load.
RERANKER_CPU_BASE_MIB = 3840
RERANKER_ROW_CENTI_MIB = 15
RERANKER_GPU_MIB = 4096
RERANKER_DEFAULT_ROWS = 8192  # the service's default batch tokens and max length
RUN_AS = 1000

# Probes: TEI and the reranker bind their port only once the model is loaded, so the startup probe
# allows 30 minutes (180 x 10 s) for the download; readiness and liveness then take over.
STARTUP_PROBE = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10,
                 "failureThreshold": 180}
READINESS_PROBE = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10,
                   "failureThreshold": 3}
LIVENESS_PROBE = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 20,
                  "failureThreshold": 3}

POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                              "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}


@dataclass(frozen=True)
class PodDefaults:
    """The operator's pod settings for every ModelService it serves (its command line:
    --image-pull-secrets, --pod-labels, --pod-annotations; the chart passes its imagePullSecrets,
    commonLabels and commonAnnotations). A ModelService's spec.pod extends them: its pull secrets
    come after these (a name given twice is kept once), and in labels and annotations its keys win.
    The pull secrets also pull the ModelCaches' download Jobs."""

    image_pull_secrets: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


def merged_pod_settings(pod: PodSettings | None, defaults: PodDefaults) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """The pull secrets (names, in order, without repeats), labels and annotations of a model's
    pods: the operator's defaults extended by the ModelService's spec.pod."""
    own = pod or PodSettings()
    names = list(defaults.image_pull_secrets) + [ref.name for ref in own.image_pull_secrets or ()]
    secrets = list(dict.fromkeys(names))
    return secrets, {**defaults.labels, **(own.labels or {})}, {**defaults.annotations, **(own.annotations or {})}


class Children(NamedTuple):
    """What the operator owns for one ModelService."""

    deployment: dict[str, Any]
    service: dict[str, Any]


def build_selector_labels(name: str) -> dict[str, str]:
    """The labels that select a ModelService's pods (immutable in a Deployment's selector)."""
    return {SELECTOR_LABEL: name}


def build_selector(name: str) -> str:
    """The same selector as a string, for status.selector (the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in build_selector_labels(name).items())


def build_labels(ms: ModelService) -> dict[str, str]:
    """Labels of the children and their pods: the recommended app.kubernetes.io labels, then the
    ModelService's own labels (so a chart's PDB or NetworkPolicy selecting them finds the pods),
    then the operator's manager and selector labels, which nothing overrides."""
    labels = {
        "app.kubernetes.io/name": "embedding-images",
        "app.kubernetes.io/instance": ms.name,
        "app.kubernetes.io/component": "reranker" if ms.spec.task == "rerank" else "embedding",
        "app.kubernetes.io/part-of": "embedding-images",
    }
    labels.update(ms.labels)
    labels["app.kubernetes.io/managed-by"] = MANAGER
    labels.update(build_selector_labels(ms.name))
    return labels


def build_endpoint(ms: ModelService) -> str:
    return f"http://{ms.name}.{ms.namespace or 'default'}.svc.cluster.local:{ms.spec.port}"


def _metadata(ms: ModelService) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": ms.name, "labels": build_labels(ms)}
    if ms.namespace:
        metadata["namespace"] = ms.namespace
    return metadata


def _secret_env(name: str, ref: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name,
                                                         "key": ref.key or DEFAULT_HF_TOKEN_KEY}}}


def model_source(spec: ModelServiceSpec, plan: Plan) -> str:
    """What the engine loads: the ModelCache's directory on its volume, else the model id (fetched
    at start)."""
    return plan.cache.path if plan.cache is not None else spec.model


def served_model_name(spec: ModelServiceSpec, name: str) -> str:
    """The model's name in the engine's answers: engineArgs.servedModelName, else the
    ModelService's name (what the gateway routes by)."""
    ea = spec.engine_args
    return ea.served_model_name if ea is not None and ea.served_model_name else name


def build_tei_args(spec: ModelServiceSpec, plan: Plan, served_name: str) -> list[str]:
    """text-embeddings-router flags (TEI 1.9). --hostname is explicit: TEI reads HOSTNAME, which
    Kubernetes sets to the pod name, and would bind to that instead of every address.
    --served-model-name is `served_name` (served_model_name()): the `model` of its OpenAI answers
    and /info, instead of the Hugging Face id or, with a ModelCache, the volume's path. On CPU the
    dtype is float32 unless the spec names one: a TEI built without MKL or ORT defaults to float16
    there, at a third of the speed (measured with TEI 1.9.3 built from source)."""
    args = ["--model-id", model_source(spec, plan), "--port", str(TEI_PORT), "--hostname", "0.0.0.0",
            "--served-model-name", served_name]
    if spec.revision:
        args += ["--revision", spec.revision]
    ea = spec.engine_args
    dtype = ea.dtype if ea is not None and ea.dtype is not None else None
    if dtype is None and not plan.gpu_count:
        dtype = TEI_CPU_DTYPE
    if ea is None and dtype is not None:
        args += ["--dtype", dtype]
    if ea is not None:
        for flag, value in (("--max-batch-tokens", ea.max_batch_tokens),
                            ("--max-client-batch-size", ea.max_client_batch_size),
                            ("--max-concurrent-requests", ea.max_concurrent_requests),
                            ("--pooling", ea.pooling),
                            ("--dtype", dtype)):
            if value is not None:
                args += [flag, str(value)]
        if ea.auto_truncate:
            args.append("--auto-truncate")
        for flag, value in (("--max-batch-requests", ea.max_batch_requests),
                            ("--payload-limit", ea.payload_limit),
                            ("--default-prompt", ea.default_prompt),
                            ("--default-prompt-name", ea.default_prompt_name)):
            if value is not None:
                args += [flag, str(value)]
    return args


def build_env(spec: ModelServiceSpec, plan: Plan, served_name: str) -> list[dict[str, Any]]:
    """The model container's environment: engine settings, cache, token, then the user's env."""
    env: list[dict[str, Any]] = []
    ea = spec.engine_args
    if plan.engine == "tei":
        env.append({"name": "HUGGINGFACE_HUB_CACHE", "value": CACHE_PATH})
        env.append({"name": "LOG_LEVEL", "value": TEI_LOG_LEVEL})
        if ea is not None and ea.api_key_secret_ref is not None:
            env.append(_secret_env("API_KEY", ea.api_key_secret_ref))
    else:
        env.append({"name": "RERANKER_MODEL", "value": model_source(spec, plan)})
        env.append({"name": "RERANKER_SERVED_MODEL_NAME", "value": served_name})
        env.append({"name": "RERANKER_HOST", "value": "0.0.0.0"})
        env.append({"name": "RERANKER_PORT", "value": str(RERANKER_PORT)})
        env.append({"name": "RERANKER_DEVICE", "value": "cuda" if plan.gpu_count else "cpu"})
        if ea is not None:
            for var, value in (("RERANKER_BATCH_TOKENS", ea.max_batch_tokens),
                               ("RERANKER_MAX_LENGTH", ea.max_length),
                               ("RERANKER_DTYPE", ea.dtype),
                               ("RERANKER_MAX_DOCUMENTS", ea.max_documents),
                               ("RERANKER_INSTRUCTION", ea.instruction),
                               ("RERANKER_PROMPT_CACHE_TOKENS", ea.prompt_cache_tokens)):
                if value is not None:
                    env.append({"name": var, "value": str(value)})
            if ea.api_key_secret_ref is not None:
                env.append(_secret_env("RERANKER_API_KEY", ea.api_key_secret_ref))
        env.append({"name": "HF_HOME", "value": CACHE_PATH})
    env += share_env(plan.share, plan.engine)
    if plan.cache is not None:
        # Every file is on the read-only volume: the pods never ask the Hub for anything.
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    if spec.hf_token_secret_ref is not None:
        env.append(_secret_env("HF_TOKEN", spec.hf_token_secret_ref))
    env += [e.model_dump(by_alias=True, exclude_none=True) for e in spec.env or []]
    return env


def reranker_memory(spec: ModelServiceSpec, plan: Plan) -> str:
    """The reranker pod's memory request and limit (see RERANKER_CPU_BASE_MIB)."""
    if plan.gpu_count:
        return f"{RERANKER_GPU_MIB}Mi"
    ea = spec.engine_args
    rows = max(ea.max_batch_tokens if ea and ea.max_batch_tokens else RERANKER_DEFAULT_ROWS,
               ea.max_length if ea and ea.max_length else RERANKER_DEFAULT_ROWS)
    return f"{RERANKER_CPU_BASE_MIB + -(-rows * RERANKER_ROW_CENTI_MIB // 100)}Mi"


def build_resources(spec: ModelServiceSpec, plan: Plan) -> dict[str, Any]:
    """The spec's resources; a reranker's memory bound when they name no memory; GPUs."""
    resources = spec.resources.model_dump(by_alias=True, exclude_none=True) if spec.resources else {}
    resources = copy.deepcopy(resources)
    named = [part for part in resources.values() if "memory" in part]
    if plan.engine == "reranker" and not named:
        memory = reranker_memory(spec, plan)
        resources.setdefault("requests", {})["memory"] = memory
        resources.setdefault("limits", {})["memory"] = memory
    if plan.gpu_count and plan.share is None:  # a share is asked for by share_pod instead
        resources.setdefault("limits", {})[GPU_RESOURCE] = plan.gpu_count
    return resources


def build_pod_spec(spec: ModelServiceSpec, plan: Plan, name: str, defaults: PodDefaults = PodDefaults(),
                   selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The pod spec of the pods of ModelService `name` (`selector`: the labels that select them,
    which a topology spread constraint without labelSelector counts)."""
    served_name = served_model_name(spec, name)
    tei = plan.engine == "tei"
    port = TEI_PORT if tei else RERANKER_PORT
    container: dict[str, Any] = {"name": "tei" if tei else "reranker", "image": plan.image}
    if tei:
        container["args"] = build_tei_args(spec, plan, served_name)
    container["env"] = build_env(spec, plan, served_name)
    container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    container["startupProbe"] = copy.deepcopy(STARTUP_PROBE)
    container["readinessProbe"] = copy.deepcopy(READINESS_PROBE)
    container["livenessProbe"] = copy.deepcopy(LIVENESS_PROBE)
    resources = build_resources(spec, plan)
    if resources:
        container["resources"] = resources
    container["securityContext"] = copy.deepcopy(CONTAINER_SECURITY_CONTEXT)
    container["volumeMounts"] = [{"name": "cache", "mountPath": CACHE_PATH},
                                 {"name": "tmp", "mountPath": "/tmp"}]
    if plan.cache is not None:
        container["volumeMounts"].append({"name": "models", "mountPath": MOUNT_PATH, "readOnly": True})

    secrets, _, _ = merged_pod_settings(spec.pod, defaults)
    pod: dict[str, Any] = {
        **({"imagePullSecrets": [{"name": name} for name in secrets]} if secrets else {}),
        "automountServiceAccountToken": False,
        **({} if tei else {"terminationGracePeriodSeconds": RERANKER_GRACE_S}),
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
    }
    settings = spec.pod or PodSettings()
    if settings.service_account_name:
        pod["serviceAccountName"] = settings.service_account_name
    if settings.priority_class_name:
        pod["priorityClassName"] = settings.priority_class_name
    if spec.runtime_class_name:
        pod["runtimeClassName"] = spec.runtime_class_name
    node_selector = {**(spec.node_selector or {}), **plan.node_selector}
    if plan.cache is not None and plan.cache.node:
        # A ReadWriteOnce cache is mounted on one node only: the one its download ran on.
        node_selector[HOSTNAME_LABEL] = plan.cache.node
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations or []]
    if plan.gpu_count and GPU_TOLERATION not in tolerations:
        tolerations.append(dict(GPU_TOLERATION))
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.affinity is not None:
        affinity = spec.affinity.model_dump(by_alias=True, exclude_none=True)
        if affinity:
            pod["affinity"] = affinity
    if settings.topology_spread_constraints:
        spread = [c.model_dump(by_alias=True, exclude_none=True) for c in settings.topology_spread_constraints]
        for constraint in spread:
            if "labelSelector" not in constraint and selector:
                constraint["labelSelector"] = {"matchLabels": dict(selector)}
        pod["topologySpreadConstraints"] = spread
    pod["containers"] = [container]
    if plan.share is not None:
        share_pod(pod, plan.share)
    cache = spec.cache
    if cache is not None and cache.existing_claim:
        cache_volume = {"name": "cache", "persistentVolumeClaim": {"claimName": cache.existing_claim}}
    else:
        empty_dir = {"sizeLimit": cache.size_limit} if cache is not None and cache.size_limit else {}
        cache_volume = {"name": "cache", "emptyDir": empty_dir}
    pod["volumes"] = [cache_volume, {"name": "tmp", "emptyDir": {}}]
    if plan.cache is not None:
        pod["volumes"].append({"name": "models", "persistentVolumeClaim": {"claimName": plan.cache.claim,
                                                                           "readOnly": True}})
    return pod


def build_pod_labels(ms: ModelService, defaults: PodDefaults = PodDefaults()) -> dict[str, str]:
    """Labels of the pods: the children's labels with the operator's and the ModelService's pod
    labels between the recommended ones and those the operator sets (which they cannot replace)."""
    _, labels, _ = merged_pod_settings(ms.spec.pod, defaults)
    children = build_labels(ms)
    reserved = {key: children[key] for key in ("app.kubernetes.io/managed-by", SELECTOR_LABEL)}
    return {**children, **labels, **reserved}


def build_deployment(ms: ModelService, plan: Plan, pod_defaults: PodDefaults = PodDefaults()) -> dict[str, Any]:
    """The Deployment that runs `plan` for a ModelService (`pod_defaults`: the operator's)."""
    metadata = _metadata(ms)
    _, _, annotations = merged_pod_settings(ms.spec.pod, pod_defaults)
    # The share's labels are the operator's, like the selector's: no pod setting replaces them.
    template_metadata: dict[str, Any] = {"labels": {**build_pod_labels(ms, pod_defaults),
                                                    **share_labels(plan.share)}}
    if annotations:
        template_metadata["annotations"] = annotations
    selector = build_selector_labels(ms.name)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": ms.spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": template_metadata,
                "spec": build_pod_spec(ms.spec, plan, ms.name, pod_defaults, selector),
            },
        },
    }


def build_service(ms: ModelService) -> dict[str, Any]:
    """The ClusterIP Service: spec.port -> the container port named http."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ms),
        "spec": {
            "type": "ClusterIP",
            "selector": build_selector_labels(ms.name),
            "ports": [{"name": "http", "port": ms.spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


@dataclass(frozen=True)
class NetworkPolicyDefaults:
    """The operator's NetworkPolicy settings for every ModelService it serves (its command line,
    from the chart's `networkPolicy` values): whether a ModelService that does not say gets a
    policy, whether it admits its own namespace, and the sources every policy admits (the
    gateway's pods, the metrics scraper, the platform's extra peers), as NetworkPolicyPeers."""

    enabled: bool = False
    allow_same_namespace: bool = True
    peers: tuple[Mapping[str, Any], ...] = ()


def build_network_policy(ms: ModelService, defaults: NetworkPolicyDefaults) -> dict[str, Any] | None:
    """The NetworkPolicy of a ModelService's pods, or None when it has none (spec.networkPolicy
    .enabled, else `defaults.enabled`). Ingress only (egress is untouched), to the container port
    named http only, from: every pod of its namespace (allowSameNamespace), then the operator's
    peers, then the ModelService's extraIngressFrom. No source at all admits nothing: the policy
    then has no ingress rule (an empty `from` would admit everyone)."""
    spec = ms.spec.network_policy
    enabled = spec.enabled if spec is not None and spec.enabled is not None else defaults.enabled
    if not enabled:
        return None
    same_namespace = (spec.allow_same_namespace if spec is not None and spec.allow_same_namespace is not None
                      else defaults.allow_same_namespace)
    peers: list[dict[str, Any]] = [{"podSelector": {}}] if same_namespace else []
    peers += [_as_stored(peer) for peer in defaults.peers]
    peers += [_as_stored(peer.model_dump(by_alias=True, exclude_none=True))
              for peer in (spec.extra_ingress_from if spec is not None else None) or []]
    policy: dict[str, Any] = {"podSelector": {"matchLabels": build_selector_labels(ms.name)},
                              "policyTypes": ["Ingress"]}
    if peers:
        policy["ingress"] = [{"ports": [{"port": "http", "protocol": "TCP"}], "from": peers}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _metadata(ms),
            "spec": policy}


def _as_stored(peer: Mapping[str, Any]) -> dict[str, Any]:
    """A NetworkPolicyPeer as the API stores it: a selector's empty `matchLabels` or
    `matchExpressions` is dropped (the selector itself stays: `namespaceSelector: {}` means every
    namespace), so a peer written with them does not look drifted at every resync."""
    stored = copy.deepcopy(dict(peer))
    for key in ("podSelector", "namespaceSelector"):
        if isinstance(stored.get(key), Mapping):
            stored[key] = {k: v for k, v in stored[key].items()
                           if k not in ("matchLabels", "matchExpressions") or v}
    return stored


def build_children(body: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]] | None = None) -> Children:
    """A ModelService body (or a plain {metadata, spec} dict) -> its Deployment and Service.

    `nodes` are needed only for accelerator auto without gpu.product. Raises PlanError for
    specs that cannot run, pydantic.ValidationError for invalid ones.
    """
    ms = parse_modelservice(body)
    plan = build_plan(ms.spec, nodes)
    return Children(build_deployment(ms, plan), build_service(ms))


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` (as the API serves it, with defaults filled in) still holds everything in
    `desired`. Lists must match element by element; scalars compare as text, so the API's "1"
    equals the 1 that was applied."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(live, list) and len(live) == len(desired)
                and all(contains(a, b) for a, b in zip(live, desired)))
    return str(live) == str(desired)


def drifted(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether a live child lost part of its desired spec or labels (edited by hand, or by another
    writer); fields the API or other controllers add are not drift. A NetworkPolicy that admits
    nothing has no ingress rule, so one added by hand (which would admit its sources) is drift."""
    live_spec = live.get("spec") or {}
    if desired["kind"] == "NetworkPolicy" and "ingress" not in desired["spec"] and live_spec.get("ingress"):
        return True
    return not (contains(live_spec, desired["spec"])
                and contains((live.get("metadata") or {}).get("labels") or {}, desired["metadata"]["labels"]))
