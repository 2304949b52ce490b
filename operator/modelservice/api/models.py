"""The ModelService resource as pydantic models: the one definition of its spec and status.

The CRD's OpenAPI schema (charts/embedding-images/crds/modelservices.yaml) is generated from
these models by `modelservice.api.crd.build_crd()`; a unit test fails when the committed file and the
models drift apart. The CEL rules (`x-kubernetes-validations`) sit next to the pydantic
validators that enforce the same rule in Python, so the API server refuses at `kubectl apply`
what the operator would refuse anyway.

Field names are the API's camelCase (aliases); Python code uses snake_case attributes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ..placement.variants import AUTO, CPU, load_table

GROUP = "serving.embedding-images.io"
VERSION = "v1alpha1"
KIND = "ModelService"
PLURAL = "modelservices"
SINGULAR = "modelservice"
SHORT_NAMES = ("msvc",)

# The operator's name in the API: the field manager of its writes, its user agent, and the
# app.kubernetes.io/managed-by label of the children it owns.
MANAGER = "embedding-images-operator"

DEFAULT_PORT = 8080
DEFAULT_HF_TOKEN_KEY = "token"

# Accelerator values: auto, then the table's variants in file order (cpu, turing, ...).
ACCELERATORS: tuple[str, ...] = (AUTO, *load_table().names)
Accelerator = Literal[ACCELERATORS]  # type: ignore[valid-type]

Task = Literal["embed", "rerank"]
Engine = Literal["auto", "tei", "reranker"]
# TEI's `--pooling` and `--dtype` value enums (text-embeddings-router --help, TEI 1.9).
TeiPooling = Literal["cls", "mean", "splade", "last-token"]
Dtype = Literal["float16", "float32", "bfloat16"]

# A Kubernetes resource quantity: an integer, or a string such as "500m" or "10Gi".
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[
    int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)],
    WithJsonSchema({
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": True,
    }),
]
# A Kubernetes name (RFC 1123 subdomain) for Secrets and claims.
ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253,
                                              pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
# The ModelService's name is its Service's and Deployment's: a DNS-1035 label (a Service name), so
# the API never refuses the children for it. A rule at the root of the schema, where CEL may read
# self.metadata.name; `check_name` enforces it in Python.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 63
NAME_RULE = {
    "rule": f"self.metadata.name.size() <= {NAME_MAX} && self.metadata.name.matches('{NAME_PATTERN}')",
    "fieldPath": ".metadata",  # the deepest path the schema knows (metadata has no properties)
    "reason": "FieldValueInvalid",
    "message": "metadata.name must be a DNS-1035 label, the name of the ModelService's Service: at most "
               "63 characters, lower-case letters, digits and '-', starting with a letter and ending "
               "with a letter or digit",
}

# Label keys and values (k8s.io/apimachinery IsQualifiedName, IsValidLabelValue): an optional
# DNS-1123 subdomain prefix (at most 253 characters) and '/', then a name of at most 63.
# No backslashes: the patterns sit in CEL string literals as they are.
LABEL_KEY_PATTERN = ("^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_PREFIX_PATTERN = r"^[^/]{1,253}/"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY_MESSAGE = ("nodeSelector keys must be label keys: an optional DNS subdomain prefix of at most 253 "
                     "characters and '/', then a name of at most 63 letters, digits, '-', '_' and '.', "
                     "starting and ending with a letter or digit")
# A map rule: keys cannot carry a schema of their own in a CRD. The API server estimates a rule's
# cost from the largest map the schema admits, hence NODE_SELECTOR_MAX entries.
NODE_SELECTOR_MAX = 64
LABEL_KEY_MAX = 253 + 1 + 63


def _label_key_cel(expr: str) -> str:
    """CEL: the string `expr` is a label key (what is_label_key checks)."""
    return f"{expr}.matches('{LABEL_KEY_PATTERN}') && (!{expr}.contains('/') || {expr}.matches('{LABEL_PREFIX_PATTERN}'))"


LABEL_KEYS_RULE = {"rule": f"self.all(k, {_label_key_cel('k')})", "message": LABEL_KEY_MESSAGE}


def is_label_key(key: str) -> bool:
    """IsQualifiedName, as LABEL_KEYS_RULE says it in CEL."""
    return bool(re.match(LABEL_KEY_PATTERN, key)) and ("/" not in key or bool(re.match(LABEL_PREFIX_PATTERN, key)))


def _label_key(key: str) -> str:
    if not is_label_key(key):
        raise ValueError(LABEL_KEY_MESSAGE)
    return key


LabelKey = Annotated[str, AfterValidator(_label_key)]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]
# Environment variable names as the API validates them since Kubernetes 1.34
# (RelaxedEnvironmentVariableValidation): printable ASCII other than '='.
ENV_NAME_PATTERN = r"^[ -<>-~]+$"

# A pass-through Kubernetes sub-object kept as the user wrote it (node/pod affinity terms).
# Only these leaves preserve unknown fields; `spec` itself is fully typed.
OpaqueObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True)


class GPU(_Model):
    """GPUs per pod and, optionally, the GPU product to run on."""

    count: int = Field(
        0, ge=0, le=16,
        description="GPUs per pod (nvidia.com/gpu). 0 means one GPU for GPU accelerators; it must "
                    "be 0 with accelerator cpu.",
    )
    product: Optional[Annotated[str, StringConstraints(min_length=1, max_length=63)]] = Field(
        None,
        description="GPU product, as the nvidia.com/gpu.product node label names it (e.g. "
                    "NVIDIA-L4). Picks the architecture from the variant table and pins pods to "
                    "nodes with that product.",
    )
    sharing: Optional["GPUSharing"] = Field(
        None, description="A share of one GPU instead of whole GPUs; unset: whole GPUs.")


SharingMode = Literal["Exclusive", "Shared"]
# The NVIDIA DRA driver's GpuConfig sharing strategies (resource.nvidia.com/v1beta1, GpuSharing
# .strategy in k8s-dra-driver-gpu api/nvidia.com/resource/v1beta1/sharing.go).
SharingStrategy = Literal["MPS", "TimeSlicing"]

SHARING_RULES = [
    {"rule": "self.mode == 'Shared' || (!has(self.memory) && !has(self.strategy))",
     "fieldPath": ".mode",
     "reason": "FieldValueInvalid",
     "message": "gpu.sharing.memory and gpu.sharing.strategy only apply to mode Shared: set mode "
                "Shared, or remove them"},
]


class GPUSharing(_Model):
    """A share of one GPU instead of a whole one (several small models on one GPU)."""

    mode: SharingMode = Field(
        "Exclusive", description="Exclusive (default): each pod takes whole GPUs. Shared: each pod "
                                 "takes a share of one GPU's memory, packed with other shares by the "
                                 "scheduler (the operator's --gpu-sharing decides how: DRA or the "
                                 "device plugin's shared resource).")
    memory: Optional[Quantity] = Field(
        None, description="GPU memory of one pod's share, e.g. 3Gi; unset: the operator's estimate "
                          "(status.gpuMemory) from the model's size, dtype and batch-token limit.")
    strategy: Optional[SharingStrategy] = Field(
        None, description="How the pods on one GPU share it (DRA mode, the NVIDIA driver's GpuConfig): "
                          "MPS (default: each pod's device memory is capped at its share) or "
                          "TimeSlicing (no memory cap).")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SHARING_RULES})

    @model_validator(mode="after")
    def _shared_only(self) -> "GPUSharing":
        if self.mode != "Shared" and (self.memory is not None or self.strategy is not None):
            raise ValueError(SHARING_RULES[0]["message"])
        return self

    @property
    def shared(self) -> bool:
        return self.mode == "Shared"


class ResourceRequirements(_Model):
    """Container resources; GPU accelerators add their nvidia.com/gpu limit themselves."""

    requests: Optional[dict[str, Quantity]] = Field(None, description="Minimum resources.")
    limits: Optional[dict[str, Quantity]] = Field(None, description="Maximum resources.")


# The API server bounds the cost of the rules below by the longest list the schema admits.
TOLERATIONS_MAX = 64
# What the API's ValidateTolerations refuses, as CEL rules on one toleration; Toleration's
# validator enforces the same in Python.
TOLERATION_RULES = [
    {"rule": f"!has(self.key) || self.key == '' || ({_label_key_cel('self.key')})",
     "fieldPath": ".key",
     "reason": "FieldValueInvalid",
     "message": "a toleration key must be a label key, like a nodeSelector key"},
    {"rule": "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
     "fieldPath": ".operator",
     "reason": "FieldValueInvalid",
     "message": "a toleration without a key must have operator Exists (it tolerates every taint)"},
    {"rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
     "fieldPath": ".value",
     "reason": "FieldValueForbidden",
     "message": "a toleration with operator Exists takes no value"},
    {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
     "fieldPath": ".tolerationSeconds",
     "reason": "FieldValueForbidden",
     "message": "tolerationSeconds needs effect NoExecute"},
]


class Toleration(_Model):
    """A pod toleration (core/v1 Toleration)."""

    key: Optional[Annotated[str, StringConstraints(max_length=LABEL_KEY_MAX)]] = None
    operator: Optional[Literal["Exists", "Equal"]] = None
    value: Optional[LabelValue] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = None

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": TOLERATION_RULES})

    @model_validator(mode="after")
    def _as_the_api_validates(self) -> "Toleration":
        if self.key and not is_label_key(self.key):
            raise ValueError(TOLERATION_RULES[0]["message"])
        if not self.key and self.operator != "Exists":
            raise ValueError(TOLERATION_RULES[1]["message"])
        if self.operator == "Exists" and self.value:
            raise ValueError(TOLERATION_RULES[2]["message"])
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(TOLERATION_RULES[3]["message"])
        return self


class Affinity(_Model):
    """Pod scheduling affinity (core/v1 Affinity); each term is passed to the pod unchanged."""

    node_affinity: Optional[OpaqueObject] = None
    pod_affinity: Optional[OpaqueObject] = None
    pod_anti_affinity: Optional[OpaqueObject] = None


class KeyRef(_Model):
    name: ObjectName
    key: str = Field(..., min_length=1)
    optional: Optional[bool] = None


class FieldRef(_Model):
    field_path: str = Field(..., min_length=1)
    api_version: Optional[str] = None


class ResourceFieldRef(_Model):
    resource: str = Field(..., min_length=1)
    container_name: Optional[str] = None
    divisor: Optional[Quantity] = None


class EnvVarSource(_Model):
    secret_key_ref: Optional[KeyRef] = None
    config_map_key_ref: Optional[KeyRef] = None
    field_ref: Optional[FieldRef] = None
    resource_field_ref: Optional[ResourceFieldRef] = None


class EnvVar(_Model):
    """An environment variable of the model container (core/v1 EnvVar)."""

    name: str = Field(..., min_length=1, pattern=ENV_NAME_PATTERN,
                      description="Printable ASCII other than '='; unique in the list.")
    value: Optional[str] = None
    value_from: Optional[EnvVarSource] = None


class SecretKeyRef(_Model):
    """A key of a Secret in the ModelService's namespace."""

    name: ObjectName = Field(..., description="Secret name.")
    key: str = Field(DEFAULT_HF_TOKEN_KEY, min_length=1, description="Key in the Secret.")


# Engine arguments that only one engine understands; the operator refuses the others
# (condition reason UnsupportedEngineArgs) instead of silently dropping them.
TEI_ONLY_ARGS = ("maxBatchRequests", "maxClientBatchSize", "maxConcurrentRequests", "pooling",
                 "autoTruncate", "payloadLimit", "defaultPrompt", "defaultPromptName")
RERANKER_ONLY_ARGS = ("maxLength", "maxDocuments", "instruction", "promptCacheTokens")


class EngineArgs(_Model):
    """Engine arguments; unset ones keep the engine's default.

    TEI: text-embeddings-router flags. Reranker: RERANKER_* settings. A field that the resolved
    engine does not understand is refused (condition reason UnsupportedEngineArgs).
    """

    max_batch_tokens: Optional[int] = Field(
        None, ge=1, description="TEI --max-batch-tokens; reranker RERANKER_BATCH_TOKENS "
                                "(the token budget of one forward batch, at least 256).")
    dtype: Optional[Dtype] = Field(None, description="TEI --dtype; reranker RERANKER_DTYPE.")
    api_key_secret_ref: Optional[SecretKeyRef] = Field(
        None, description="Secret holding an API key clients must send as a Bearer token "
                          "(TEI API_KEY, reranker RERANKER_API_KEY).")
    served_model_name: Optional[Annotated[str, StringConstraints(min_length=1, max_length=253)]] = Field(
        None, description="The model's name in the engine's answers (TEI --served-model-name: the `model` of "
                          "/v1/embeddings; reranker RERANKER_SERVED_MODEL_NAME: /health and /info); unset: the "
                          "ModelService's name, which the gateway routes by.")
    max_batch_requests: Optional[int] = Field(None, ge=1, description="TEI --max-batch-requests.")
    max_client_batch_size: Optional[int] = Field(None, ge=1, description="TEI --max-client-batch-size.")
    max_concurrent_requests: Optional[int] = Field(None, ge=1, description="TEI --max-concurrent-requests.")
    pooling: Optional[TeiPooling] = Field(None, description="TEI --pooling.")
    auto_truncate: Optional[bool] = Field(None, description="TEI --auto-truncate.")
    payload_limit: Optional[int] = Field(None, ge=1, description="TEI --payload-limit (bytes).")
    default_prompt: Optional[str] = Field(None, description="TEI --default-prompt.")
    default_prompt_name: Optional[str] = Field(None, description="TEI --default-prompt-name.")
    max_length: Optional[int] = Field(None, ge=64, description="Reranker RERANKER_MAX_LENGTH (tokens per pair).")
    max_documents: Optional[int] = Field(None, ge=1, description="Reranker RERANKER_MAX_DOCUMENTS per request.")
    instruction: Optional[str] = Field(None, min_length=1, description="Reranker RERANKER_INSTRUCTION (default instruction).")
    prompt_cache_tokens: Optional[int] = Field(
        None, ge=0, description="Reranker RERANKER_PROMPT_CACHE_TOKENS (token rows of prompt heads, "
                                "system prompt and instruction, kept between passes; 0 keeps none).")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!(has(self.defaultPrompt) && has(self.defaultPromptName))",
        "message": "defaultPrompt and defaultPromptName are exclusive (TEI accepts one of them)",
    }]})

    @model_validator(mode="after")
    def _exclusive_prompts(self) -> "EngineArgs":
        if self.default_prompt is not None and self.default_prompt_name is not None:
            raise ValueError("defaultPrompt and defaultPromptName are exclusive (TEI accepts one of them)")
        return self


CACHE_RULES = [
    {"rule": "!(has(self.sizeLimit) && has(self.existingClaim))",
     "message": "set either sizeLimit (emptyDir) or existingClaim (PersistentVolumeClaim), not both"},
    {"rule": "!(has(self.modelCache) && has(self.existingClaim))",
     "fieldPath": ".modelCache",
     "reason": "FieldValueForbidden",
     "message": "set either modelCache (a ModelCache fills the volume once) or existingClaim, not both"},
]


class Cache(_Model):
    """Where the model's files come from: a ModelCache the operator fills once and mounts read-only
    (`modelCache`), or a download at every pod start into an emptyDir (optionally size-limited) or
    an existing claim at /data."""

    size_limit: Optional[Quantity] = Field(None, description="emptyDir size limit, e.g. 10Gi.")
    existing_claim: Optional[ObjectName] = Field(
        None, description="Existing PersistentVolumeClaim, kept across pod restarts.")
    model_cache: Optional[ObjectName] = Field(
        None, description="A ModelCache in the ModelService's namespace holding spec.model: pods are "
                          "created once it is Cached, mount it read-only at /models and run offline "
                          "(HF_HUB_OFFLINE=1); its revision is the one served.")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": CACHE_RULES})

    @model_validator(mode="after")
    def _one_kind(self) -> "Cache":
        if self.size_limit is not None and self.existing_claim is not None:
            raise ValueError(CACHE_RULES[0]["message"])
        if self.model_cache is not None and self.existing_claim is not None:
            raise ValueError(CACHE_RULES[1]["message"])
        return self


# The API server bounds the cost of the peer rules by the longest list the schema admits.
PEERS_MAX = 32
# What the API's ValidateNetworkPolicyPeer refuses, as CEL rules on one peer; NetworkPolicyPeer's
# validator enforces the same in Python.
PEER_RULES = [
    {"rule": "has(self.podSelector) || has(self.namespaceSelector) || has(self.ipBlock)",
     "reason": "FieldValueRequired",
     "message": "a peer needs podSelector, namespaceSelector or ipBlock"},
    {"rule": "!has(self.ipBlock) || !(has(self.podSelector) || has(self.namespaceSelector))",
     "fieldPath": ".ipBlock",
     "reason": "FieldValueForbidden",
     "message": "a peer with ipBlock takes no podSelector or namespaceSelector"},
]


class IPBlock(_Model):
    """A CIDR range admitted, less the `except` ranges (networking/v1 IPBlock)."""

    cidr: str = Field(..., min_length=1, max_length=64, description="e.g. 10.0.0.0/8.")
    except_: Optional[list[Annotated[str, StringConstraints(min_length=1, max_length=64)]]] = Field(
        None, alias="except", max_length=PEERS_MAX, description="Ranges inside cidr left out.")


class LabelSelectorRequirement(_Model):
    key: Annotated[str, StringConstraints(min_length=1, max_length=LABEL_KEY_MAX)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: Optional[list[LabelValue]] = Field(None, max_length=PEERS_MAX)


class LabelSelector(_Model):
    """A label selector (meta/v1 LabelSelector); {} selects everything."""

    match_labels: Optional[dict[Annotated[str, StringConstraints(min_length=1, max_length=LABEL_KEY_MAX)],
                                LabelValue]] = Field(None, max_length=PEERS_MAX)
    match_expressions: Optional[list[LabelSelectorRequirement]] = Field(None, max_length=PEERS_MAX)


class NetworkPolicyPeer(_Model):
    """A source admitted to the model's port (networking/v1 NetworkPolicyPeer), kept as written:
    podSelector alone means pods of the ModelService's namespace;
    with namespaceSelector, pods of the namespaces it selects."""

    pod_selector: Optional[LabelSelector] = Field(
        None, description="A label selector of pods ({} selects all); alone: in the ModelService's namespace.")
    namespace_selector: Optional[LabelSelector] = Field(
        None, description="A label selector of namespaces, e.g. matchLabels kubernetes.io/metadata.name: monitoring.")
    ip_block: Optional[IPBlock] = Field(None, description="A CIDR range (alone in its peer).")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": PEER_RULES})

    @model_validator(mode="after")
    def _as_the_api_validates(self) -> "NetworkPolicyPeer":
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if not selectors and self.ip_block is None:
            raise ValueError(PEER_RULES[0]["message"])
        if selectors and self.ip_block is not None:
            raise ValueError(PEER_RULES[1]["message"])
        return self


class NetworkPolicy(_Model):
    """The model's NetworkPolicy: default-deny ingress to its pods, but for the sources named here
    and the operator's own (--network-policy-peers: the chart's gateway and metrics scraper).
    Unset fields take the operator's defaults (--network-policy, --network-policy-same-namespace)."""

    enabled: Optional[bool] = Field(
        None, description="Create the NetworkPolicy (true) or not (false: none, and the operator "
                          "deletes the one it made); unset: the operator's default (chart "
                          "networkPolicy.enabled).")
    allow_same_namespace: Optional[bool] = Field(
        None, description="Admit every pod of the ModelService's namespace; unset: the operator's "
                          "default (chart networkPolicy.allowSameNamespace, true).")
    extra_ingress_from: Optional[list[NetworkPolicyPeer]] = Field(
        None, max_length=PEERS_MAX,
        description="More sources admitted to the model's port (NetworkPolicyPeers, kept as "
                    "written), after the operator's own.")


# --- pod settings -------------------------------------------------------------------------------
# The labels that select a model's pods, in either mode (the operator's, and the chart's without
# it), and the one naming the applier: a ModelService's spec.pod.labels cannot set them, or its
# Deployment would no longer select its own pods.
SELECTOR_LABEL = "serving.embedding-images.io/modelservice"
RESERVED_POD_LABELS = (SELECTOR_LABEL, "app.kubernetes.io/name", "app.kubernetes.io/instance",
                       "app.kubernetes.io/component", "app.kubernetes.io/managed-by")
POD_MAP_MAX = 64
PULL_SECRETS_MAX = 32
SPREAD_MAX = 8
ANNOTATION_KEY_MESSAGE = ("annotation keys must be qualified names: an optional DNS subdomain prefix of at "
                          "most 253 characters and '/', then a name of at most 63 letters, digits, '-', "
                          "'_' and '.', starting and ending with a letter or digit")
POD_LABEL_RULES = [
    {"rule": f"self.all(k, {_label_key_cel('k')})",
     "message": LABEL_KEY_MESSAGE.replace("nodeSelector keys", "pod label keys")},
    {"rule": "self.all(k, !(k in [" + ", ".join(f"'{k}'" for k in RESERVED_POD_LABELS) + "]))",
     "reason": "FieldValueForbidden",
     "message": "pod labels cannot set the labels that select the model's pods or name their manager: "
                + ", ".join(RESERVED_POD_LABELS)},
]
POD_ANNOTATION_RULES = [{"rule": f"self.all(k, {_label_key_cel('k')})", "message": ANNOTATION_KEY_MESSAGE}]


def _pod_labels(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:
        if not is_label_key(key):
            raise ValueError(POD_LABEL_RULES[0]["message"])
    if set(labels) & set(RESERVED_POD_LABELS):
        raise ValueError(POD_LABEL_RULES[1]["message"])
    return labels


def _annotation_keys(annotations: dict[str, str]) -> dict[str, str]:
    if not all(is_label_key(key) for key in annotations):
        raise ValueError(ANNOTATION_KEY_MESSAGE)
    return annotations


class LocalObjectReference(_Model):
    """An object of the ModelService's namespace, by name (core/v1 LocalObjectReference)."""

    name: ObjectName = Field(..., description="Its name.")


class TopologySpreadConstraint(_Model):
    """How the model's pods spread across a topology (core/v1 TopologySpreadConstraint). Without
    labelSelector it counts the model's own pods (the Deployment's selector)."""

    max_skew: int = Field(..., ge=1, description="The most the pod count may differ between two domains.")
    topology_key: Annotated[str, StringConstraints(min_length=1, max_length=LABEL_KEY_MAX)] = Field(
        ..., description="A node label whose values are the domains, e.g. topology.kubernetes.io/zone.")
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = Field(
        ..., description="DoNotSchedule: a pod that would break maxSkew waits; ScheduleAnyway: it runs, "
                         "placed to reduce the skew.")
    label_selector: Optional[LabelSelector] = Field(
        None, description="The pods counted; unset: the model's own pods.")
    min_domains: Optional[int] = Field(None, ge=1, description="With DoNotSchedule: the fewest domains counted.")
    node_affinity_policy: Optional[Literal["Honor", "Ignore"]] = None
    node_taints_policy: Optional[Literal["Honor", "Ignore"]] = None
    match_label_keys: Optional[list[Annotated[str, StringConstraints(min_length=1, max_length=LABEL_KEY_MAX)]]] = Field(
        None, max_length=PEERS_MAX, description="Pod label keys whose values select the pods counted, with labelSelector.")


POD_RULES = [
    {"rule": "!has(self.topologySpreadConstraints) || self.topologySpreadConstraints.all(a, "
             "self.topologySpreadConstraints.exists_one(b, a.topologyKey == b.topologyKey && "
             "a.whenUnsatisfiable == b.whenUnsatisfiable))",
     "fieldPath": ".topologySpreadConstraints",
     "reason": "FieldValueDuplicate",
     "message": "topologySpreadConstraints: one constraint per topologyKey and whenUnsatisfiable"},
]


class PodSettings(_Model):
    """Settings of the model's pods that the serving itself does not decide: pulling images from a
    private registry, labels and annotations for the platform (service mesh, cost, secret agents),
    priority, spread across zones, and a ServiceAccount of its own (workload identity). The
    operator's defaults (--image-pull-secrets, --pod-labels, --pod-annotations; the chart's
    imagePullSecrets, commonLabels, commonAnnotations) come first: lists are appended to them
    without repeats, and in maps the ModelService's keys win."""

    image_pull_secrets: Optional[list[LocalObjectReference]] = Field(
        None, max_length=PULL_SECRETS_MAX,
        description="Secrets of the namespace that pull the model image (after the operator's).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    labels: Optional[dict[str, LabelValue]] = Field(
        None, max_length=POD_MAP_MAX,
        description="Labels of the pods (over the operator's); never the labels that select them "
                    "(" + ", ".join(RESERVED_POD_LABELS) + ").",
        json_schema_extra={"x-kubernetes-validations": POD_LABEL_RULES})
    annotations: Optional[dict[str, str]] = Field(
        None, max_length=POD_MAP_MAX, description="Annotations of the pods (over the operator's).",
        json_schema_extra={"x-kubernetes-validations": POD_ANNOTATION_RULES})
    priority_class_name: Optional[ObjectName] = Field(None, description="PriorityClass of the pods.")
    topology_spread_constraints: Optional[list[TopologySpreadConstraint]] = Field(
        None, max_length=SPREAD_MAX, description="How the pods spread across nodes or zones.")
    service_account_name: Optional[ObjectName] = Field(
        None, description="ServiceAccount the pods run as (e.g. for workload identity to a private model "
                          "bucket); unset: the namespace's default. Its API token is still not mounted "
                          "(automountServiceAccountToken: false): identity webhooks project their own.")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": POD_RULES})

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: Optional[dict[str, str]]) -> Optional[dict[str, str]]:
        return None if labels is None else _pod_labels(labels)

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, annotations: Optional[dict[str, str]]) -> Optional[dict[str, str]]:
        return None if annotations is None else _annotation_keys(annotations)

    @model_validator(mode="after")
    def _one_spread_per_key(self) -> "PodSettings":
        keys = [(c.topology_key, c.when_unsatisfiable) for c in self.topology_spread_constraints or ()]
        if len(keys) != len(set(keys)):
            raise ValueError(POD_RULES[0]["message"])
        return self


# Requests in flight plus queued that one replica should carry when spec.autoscaling gives no
# targetRequests (operator/modelservice/README.md, "Autoscaling", says why these numbers).
DEFAULT_TARGET_REQUESTS = {"reranker": 4, "tei": 32}
AUTOSCALING_RULES = [
    {"rule": "self.minReplicas <= self.maxReplicas",
     "fieldPath": ".minReplicas",
     "reason": "FieldValueInvalid",
     "message": "autoscaling.minReplicas must not be above maxReplicas"},
]


class Autoscaling(_Model):
    """The replica count follows the demand (operator/modelservice/README.md, "Autoscaling"). While
    enabled, the operator sets spec.replicas through the scale subresource: a `kubectl scale` or
    another autoscaler's write is overwritten at its next decision."""

    enabled: bool = Field(True, description="false: spec.replicas is the user's again (the other "
                                            "fields are kept).")
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 lets an idle model go to zero "
                                                   "(the gateway holds the next request until a pod is ready).")
    max_replicas: int = Field(..., ge=1, description="Most replicas (at least 1).")
    target_requests: Optional[float] = Field(
        None, ge=0.1, description="Requests in flight plus queued that one replica should carry; "
                                f"unset: {DEFAULT_TARGET_REQUESTS['reranker']} on the reranker engine, "
                                f"{DEFAULT_TARGET_REQUESTS['tei']} on TEI.")
    scale_down_delay_seconds: int = Field(
        300, ge=0, le=86400, description="Fewer replicas only after every sample of this long asked for "
                                         "fewer, and at most half of them at a time.")
    scale_down_tolerance: float = Field(
        0.1, ge=0, le=0.5, description="Fewer replicas only where the demand fills at most 1 - this "
                                       "of their capacity (the HPA's tolerance): demand wandering "
                                       "around a multiple of targetRequests does not flap the count.")
    window_seconds: int = Field(15, ge=1, le=600, description="Demand is averaged over this long before "
                                                              "it is divided by targetRequests.")
    scrape_interval_seconds: int = Field(5, ge=1, le=300, description="How often the pods' and the "
                                                                      "gateway's metrics are read.")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": AUTOSCALING_RULES})

    @model_validator(mode="after")
    def _bounds(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(AUTOSCALING_RULES[0]["message"])
        return self


# CEL rules on spec for gpu.sharing (SPEC_RULES ends with them).
SHARING_SPEC_RULES = [
    {"rule": "self.accelerator != 'cpu' || !has(self.gpu) || !has(self.gpu.sharing) "
             "|| self.gpu.sharing.mode != 'Shared'",
     "fieldPath": ".gpu.sharing.mode",
     "reason": "FieldValueForbidden",
     "message": "accelerator cpu takes no GPU share: remove gpu.sharing, or choose a GPU accelerator"},
    {"rule": "!has(self.gpu) || !has(self.gpu.sharing) || self.gpu.sharing.mode != 'Shared' "
             "|| self.gpu.count <= 1",
     "fieldPath": ".gpu.count",
     "reason": "FieldValueForbidden",
     "message": "a GPU share is part of one GPU: set gpu.count to 0 or 1 with gpu.sharing.mode Shared"},
    {"rule": "!has(self.gpu) || !has(self.gpu.sharing) || self.gpu.sharing.mode != 'Shared' "
             "|| !self.fallbackToCPU",
     "fieldPath": ".fallbackToCPU",
     "reason": "FieldValueForbidden",
     "message": "fallbackToCPU does not combine with gpu.sharing.mode Shared (a share that does not fit "
                "waits for room on a GPU)"},
]

# CEL rules on spec, with the pydantic validator below enforcing the same in Python.
SPEC_RULES = [
    {"rule": "self.accelerator != 'cpu' || !has(self.gpu) || self.gpu.count == 0",
     "fieldPath": ".gpu.count",
     "reason": "FieldValueForbidden",
     "message": "accelerator cpu takes no GPUs: set gpu.count to 0, or choose a GPU accelerator"},
    {"rule": "self.accelerator != 'cpu' || !has(self.gpu) || !has(self.gpu.product)",
     "fieldPath": ".gpu.product",
     "reason": "FieldValueForbidden",
     "message": "accelerator cpu takes no GPU product: remove gpu.product, or set accelerator to auto"},
    {"rule": "!self.fallbackToCPU || self.accelerator == 'auto'",
     "fieldPath": ".fallbackToCPU",
     "reason": "FieldValueForbidden",
     "message": "fallbackToCPU needs accelerator auto (a named accelerator never falls back)"},
    {"rule": "!has(self.revision) || !has(self.cache) || !has(self.cache.modelCache)",
     "fieldPath": ".revision",
     "reason": "FieldValueForbidden",
     "message": "with cache.modelCache the revision served is the ModelCache's: remove spec.revision "
                "and set it on the ModelCache"},
    {"rule": "!(self.task == 'embed' && self.engine == 'reranker')",
     "fieldPath": ".engine",
     "reason": "FieldValueInvalid",
     "message": "engine reranker only serves task rerank: use engine auto or tei for embeddings"},
    *SHARING_SPEC_RULES,
]


class ModelServiceSpec(_Model):
    """What to serve and where: a model, its engine, and the hardware it runs on."""

    task: Task = Field(..., description="embed (text embeddings) or rerank (query-document scores).")
    model: str = Field(..., min_length=1, max_length=512,
                       description="Hugging Face model id (org/name) or a local path in the cache volume.")
    revision: Optional[Annotated[str, StringConstraints(min_length=1, max_length=255)]] = Field(
        None, description="Model revision (branch, tag or commit); unset: the default branch.")
    engine: Engine = Field(
        "auto", description="auto: embed -> tei; rerank -> reranker for Qwen3-Reranker (causal LM) "
                            "models, tei for sequence-classification rerankers (which engine "
                            "reranker also serves).")
    replicas: int = Field(1, ge=0, description="Pod replicas (the scale subresource sets it). With "
                                               "autoscaling enabled the operator sets it.")
    accelerator: Accelerator = Field(
        AUTO, description="auto (choose a GPU architecture from the cluster's nodes), cpu, or a "
                          "GPU architecture from the variant table.")
    gpu: Optional[GPU] = Field(None, description="GPUs per pod and GPU product.")
    fallback_to_cpu: bool = Field(
        False, alias="fallbackToCPU",
        description="With accelerator auto: run the CPU image when no GPU node can hold the replicas.")
    image: Optional[Annotated[str, StringConstraints(min_length=1, max_length=512)]] = Field(
        None, description="Full image reference; overrides the variant table's image.")
    resources: Optional[ResourceRequirements] = Field(None, description="Container resources.")
    node_selector: Optional[dict[LabelKey, LabelValue]] = Field(
        None, max_length=NODE_SELECTOR_MAX,
        description="Extra node selector (the accelerator's own node pinning wins on conflicts).",
        json_schema_extra={"x-kubernetes-validations": [LABEL_KEYS_RULE]})
    tolerations: Optional[list[Toleration]] = Field(
        None, max_length=TOLERATIONS_MAX, description="Extra tolerations (GPU accelerators tolerate the nvidia.com/gpu taint themselves).")
    affinity: Optional[Affinity] = Field(None, description="Pod affinity and anti-affinity.")
    runtime_class_name: Optional[Annotated[str, StringConstraints(min_length=1, max_length=253)]] = Field(
        None, description="RuntimeClass of the pods (e.g. nvidia).")
    env: Optional[list[EnvVar]] = Field(
        None, description="Extra environment variables of the model container.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    engine_args: Optional[EngineArgs] = Field(None, description="Engine arguments.")
    hf_token_secret_ref: Optional[SecretKeyRef] = Field(
        None, alias="hfTokenSecretRef",
        description="Secret with a Hugging Face token for gated models (HF_TOKEN).")
    cache: Optional[Cache] = Field(None, description="Where the model's files come from: a ModelCache, "
                                                     "or a download at pod start (default: into an emptyDir).")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="Port of the Service.")
    network_policy: Optional[NetworkPolicy] = Field(
        None, description="An ingress NetworkPolicy for the pods: only the model's port, only from "
                          "the sources it names and the operator's defaults; egress is untouched.")
    autoscaling: Optional[Autoscaling] = Field(None, description="Replicas from demand instead of spec.replicas.")
    pod: Optional[PodSettings] = Field(
        None, description="Pod settings: image pull secrets, labels, annotations, priority class, topology "
                          "spread, ServiceAccount (extending the operator's defaults).")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SPEC_RULES})

    @field_validator("env")
    @classmethod
    def _unique_env_names(cls, env: Optional[list[EnvVar]]) -> Optional[list[EnvVar]]:
        names = [var.name for var in env or ()]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate env names: {', '.join(duplicates)} (env is a list keyed by name)")
        return env

    @model_validator(mode="after")
    def _consistent(self) -> "ModelServiceSpec":
        gpu = self.gpu or GPU()
        if self.accelerator == CPU and gpu.count:
            raise ValueError(SPEC_RULES[0]["message"])
        if self.accelerator == CPU and gpu.product is not None:
            raise ValueError(SPEC_RULES[1]["message"])
        if self.fallback_to_cpu and self.accelerator != AUTO:
            raise ValueError(SPEC_RULES[2]["message"])
        if self.revision is not None and self.cache is not None and self.cache.model_cache is not None:
            raise ValueError(SPEC_RULES[3]["message"])
        if self.task == "embed" and self.engine == "reranker":
            raise ValueError(SPEC_RULES[4]["message"])
        shared = gpu.sharing is not None and gpu.sharing.shared
        if shared and self.accelerator == CPU:
            raise ValueError(SHARING_SPEC_RULES[0]["message"])
        if shared and gpu.count > 1:
            raise ValueError(SHARING_SPEC_RULES[1]["message"])
        if shared and self.fallback_to_cpu:
            raise ValueError(SHARING_SPEC_RULES[2]["message"])
        return self


class Condition(_Model):
    """A Kubernetes-style condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    observed_generation: Optional[int] = None
    last_transition_time: Optional[str] = None


def build_condition(type_: str, ok: bool, reason: str, message: str, generation: int | None,
                    old: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """A condition as the API stores it; its lastTransitionTime moves only when its status does
    (`old`: the condition of that type the object had, if any)."""
    status = "True" if ok else "False"
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    cond = {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since or now}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


class AutoscalingStatus(_Model):
    """The autoscaler's last account: written when its decision or reason changes, and with a
    changed demand at most every STATUS_EVERY_S seconds."""

    demand: Optional[float] = Field(None, description="Requests in flight plus queued plus held by "
                                                      "the gateway, averaged over the window.")
    target_requests: Optional[float] = Field(None, description="The target per replica in effect.")
    desired_replicas: Optional[int] = Field(None, description="The replica count the policy chose.")
    reason: Optional[str] = Field(None, description="ScaledUp, ScaledDown, OutOfBounds, Steady, "
                                                    "WaitingForScaleDownDelay, IncompleteSamples.")
    message: Optional[str] = None
    last_scale_time: Optional[str] = Field(None, description="When the operator last changed spec.replicas.")


class ModelCacheMount(_Model):
    """The ModelCache volume a ModelService's pods mount read-only."""

    name: str = Field(..., description="The ModelCache.")
    claim_name: str = Field(..., description="Its PersistentVolumeClaim.")
    path: str = Field(..., description="The model's directory in the pods.")
    node_name: Optional[str] = Field(None, description="ReadWriteOnce: the node every pod runs on.")


class ModelServiceStatus(_Model):
    """What the operator made of the spec, written only when it changes."""

    observed_generation: Optional[int] = None
    phase: Optional[Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"]] = None
    conditions: Optional[list[Condition]] = None
    replicas: Optional[int] = Field(None, description="Pods of the current Deployment (scale subresource).")
    ready_replicas: Optional[int] = None
    ready: Optional[str] = Field(None, description="ready/desired pods, e.g. 2/3.")
    engine: Optional[Literal["tei", "reranker"]] = None
    variant: Optional[str] = Field(None, description="The variant table row the pods run.")
    image: Optional[str] = None
    node_selector: Optional[dict[str, str]] = Field(None, description="The node pinning the operator chose.")
    gpu_count: Optional[int] = Field(None, description="GPUs each pod requests (0 on the cpu variant).")
    fell_back_to_cpu: Optional[bool] = Field(
        None, alias="fellBackToCPU",
        description="True when no GPU node could hold the replicas and the pods run the CPU image.")
    gpu_share: Optional["GPUShareStatus"] = Field(
        None, description="With gpu.sharing.mode Shared: the GPU memory share each pod takes.")
    endpoint: Optional[str] = Field(None, description="http://<name>.<namespace>.svc.cluster.local:<port>")
    selector: Optional[str] = Field(None, description="Label selector of the pods (scale subresource).")
    autoscaling: Optional[AutoscalingStatus] = Field(None, description="With spec.autoscaling enabled.")
    model_cache: Optional[ModelCacheMount] = Field(None, description="With spec.cache.modelCache: what the "
                                                                     "pods mount.")


class GPUShareStatus(_Model):
    """The share of one GPU each pod of a sharing ModelService takes."""

    memory: str = Field(..., description="GPU memory of one pod's share (a quantity, e.g. 1536Mi).")
    source: Literal["Spec", "Estimate"] = Field(
        ..., description="Spec: gpu.sharing.memory; Estimate: the operator's estimate.")
    estimate: Optional[str] = Field(None, description="How the estimate was made: weights, "
                                                      "activations and CUDA context, in MiB.")
    mechanism: Literal["DRA", "DevicePlugin"] = Field(..., description="How the share is requested.")
    strategy: Optional[str] = Field(None, description="DRA: the GpuConfig sharing strategy.")
    claim_template: Optional[str] = Field(None, description="DRA: the ResourceClaimTemplate of the pods' claims.")


ModelServiceStatus.model_rebuild()


def parse_spec(spec: Mapping[str, Any]) -> ModelServiceSpec:
    """Validates a ModelService spec (as the API serves it) into the model."""
    return ModelServiceSpec.model_validate(dict(spec))


@dataclass(frozen=True)
class ModelService:
    """A ModelService as the operator works with it: its identity, its spec validated once per
    reconcile, and the status it last wrote (the operator's own output, read back as served)."""

    name: str
    namespace: str | None
    spec: ModelServiceSpec
    generation: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)


def _dns_label(name: str, max_length: int, rule: Mapping[str, str]) -> str:
    if len(name) > max_length or not re.match(NAME_PATTERN, name):
        raise ValueError(rule["message"])
    return name


def check_name(name: str) -> str:
    """NAME_RULE in Python: `name` when it is a DNS-1035 label, else ValueError with its message."""
    return _dns_label(name, NAME_MAX, NAME_RULE)


def _body_model(kind: str, check: Any, spec: type) -> type[BaseModel]:
    """What parse_modelservice / parse_modelcache validate: the metadata fields the operator judges
    (the name; the rest is the API server's) and the spec, so that error locations start with
    metadata or spec."""
    config = ConfigDict(extra="ignore", strict=True)
    metadata = create_model(f"_{kind}Metadata", __config__=config,
                            name=(Annotated[str, AfterValidator(check)], ...))
    return create_model(f"_{kind}Body", __config__=config, metadata=(metadata, ...), spec=(spec, ...))


def _validate(model: type[BaseModel], body: Mapping[str, Any]) -> Any:
    meta = body.get("metadata") or {}
    return model.model_validate({"metadata": {"name": meta.get("name")}, "spec": dict(body.get("spec") or {})})


_Body = _body_model("ModelService", check_name, ModelServiceSpec)


def parse_modelservice(body: Mapping[str, Any]) -> ModelService:
    """A ModelService body (as the API serves it, or a plain {metadata, spec} dict as the chart
    renders it) -> ModelService. Raises pydantic.ValidationError for an invalid name or spec
    (error locations ("metadata", "name"), ("spec", ...))."""
    meta = body.get("metadata") or {}
    valid = _validate(_Body, body)
    return ModelService(
        name=meta["name"],
        namespace=meta.get("namespace"),
        spec=valid.spec,
        generation=meta.get("generation"),
        labels=dict(meta.get("labels") or {}),
        status=dict(body.get("status") or {}),
    )


# --- ModelCache ---------------------------------------------------------------------------------
# A model's files fetched once into a PersistentVolumeClaim by a download Job, for every
# ModelService of its namespace that names it (spec.cache.modelCache). The operator README says
# why this is a resource of its own rather than a field block of ModelService.

CACHE_KIND = "ModelCache"
CACHE_PLURAL = "modelcaches"
CACHE_SINGULAR = "modelcache"
CACHE_SHORT_NAMES = ("mcache",)
# The download Job is named <cache>-<10 hex>, and a Job's name is a label value (job-name) of its
# pods: at most 63 characters.
CACHE_NAME_MAX = 52
CACHE_NAME_RULE = {
    "rule": f"self.metadata.name.size() <= {CACHE_NAME_MAX} && self.metadata.name.matches('{NAME_PATTERN}')",
    "fieldPath": ".metadata",
    "reason": "FieldValueInvalid",
    "message": f"metadata.name must be a DNS-1035 label of at most {CACHE_NAME_MAX} characters (its "
               "download Job is named after it): lower-case letters, digits and '-', starting with a "
               "letter and ending with a letter or digit",
}
DEFAULT_REVISION = "main"
# Fields fixed at creation: a volume cannot change class or access mode, and another model is
# another cache. `self == oldSelf` is a transition rule: kubectl names the field it refuses.
CACHE_IMMUTABLE = {"model", "storageClassName", "accessMode"}


def _immutable(field_name: str) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{
        "rule": "self == oldSelf",
        "message": f"{field_name} is immutable: create another ModelCache (and point the ModelServices "
                   "at it) instead",
    }]}


AccessMode = Literal["ReadWriteOnce", "ReadWriteMany"]
Retention = Literal["Keep", "DeleteWhenUnused"]


class ModelCacheSpec(_Model):
    """A model and revision to fetch once into a volume, and the volume."""

    model: str = Field(..., min_length=1, max_length=512, pattern=r"^[A-Za-z0-9][-\w.]*/[-\w.]+$",
                       description="Hugging Face model id (org/name). Immutable.",
                       json_schema_extra=_immutable("model"))
    revision: Annotated[str, StringConstraints(min_length=1, max_length=255)] = Field(
        DEFAULT_REVISION, description="Branch, tag or commit. A change fetches the new revision into the "
                                      "same volume (files shared between revisions are not fetched "
                                      "again); pods roll to it only once it is complete.")
    size: Quantity = Field(..., description="Volume size (the claim's storage request), e.g. 20Gi: room "
                                            "for every revision kept (see status.bytes). Raising it "
                                            "expands the claim where the storage class allows.")
    storage_class_name: Optional[Annotated[str, StringConstraints(min_length=1, max_length=253)]] = Field(
        None, description="Storage class of the claim; unset: the cluster's default. Immutable.",
        json_schema_extra=_immutable("storageClassName"))
    access_mode: AccessMode = Field(
        "ReadWriteOnce", description="ReadWriteMany: pods on any node mount the volume (needs a storage "
                                     "class that offers it, e.g. NFS, CephFS, EFS, Filestore). "
                                     "ReadWriteOnce: one node mounts it, so every pod of every "
                                     "ModelService using the cache runs on the node the download ran "
                                     "on (status.nodeName). Immutable.",
        json_schema_extra=_immutable("accessMode"))
    hf_token_secret_ref: Optional[SecretKeyRef] = Field(
        None, alias="hfTokenSecretRef",
        description="Secret with a Hugging Face token for gated or private models (the download Job's "
                    "HF_TOKEN; the pods run offline and need none).")
    retention: Retention = Field(
        "Keep", description="Keep: the files stay when no ModelService uses the cache (deleting the "
                            "ModelCache deletes them). DeleteWhenUnused: the volume exists only while a "
                            "ModelService names the cache: fetched when the first one appears, deleted "
                            "with the last one.")
    node_selector: Optional[dict[LabelKey, LabelValue]] = Field(
        None, max_length=NODE_SELECTOR_MAX,
        description="Node selector of the download Job (with ReadWriteOnce, the node it lands on is "
                    "where the models run).",
        json_schema_extra={"x-kubernetes-validations": [LABEL_KEYS_RULE]})
    tolerations: Optional[list[Toleration]] = Field(
        None, max_length=TOLERATIONS_MAX, description="Tolerations of the download Job.")


class ModelCacheStatus(_Model):
    """What the operator made of the cache, written only when it changes."""

    observed_generation: Optional[int] = None
    conditions: Optional[list[Condition]] = None
    revision: Optional[str] = Field(None, description="The revision complete on the volume, the one pods "
                                                      "are given (during a revision change: the old one).")
    commit: Optional[str] = Field(None, description="The commit that revision resolved to; later downloads "
                                                    "of the same revision fetch this commit.")
    path: Optional[str] = Field(None, description="Where the pods find the files, e.g. "
                                                  "/models/models/BAAI--bge-m3/main.")
    bytes: Optional[int] = Field(None, description="Bytes of that revision's files on the volume.")
    files: Optional[int] = Field(None, description="Files of that revision.")
    node_name: Optional[str] = Field(None, description="ReadWriteOnce: the node holding the volume, "
                                                       "where the pods run.")
    claim_name: Optional[str] = Field(None, description="The PersistentVolumeClaim.")
    job: Optional[str] = Field(None, description="The download Job of the current revision.")
    users: Optional[list[str]] = Field(None, description="ModelServices of the namespace that name the cache.")


@dataclass(frozen=True)
class ModelCache:
    """A ModelCache as the operator works with it (see ModelService)."""

    name: str
    namespace: str | None
    spec: ModelCacheSpec
    generation: int | None = None
    uid: str | None = None
    status: Mapping[str, Any] = field(default_factory=dict)


def check_cache_name(name: str) -> str:
    """CACHE_NAME_RULE in Python."""
    return _dns_label(name, CACHE_NAME_MAX, CACHE_NAME_RULE)


_CacheBody = _body_model("ModelCache", check_cache_name, ModelCacheSpec)


def parse_modelcache(body: Mapping[str, Any]) -> ModelCache:
    """A ModelCache body -> ModelCache; pydantic.ValidationError for an invalid name or spec."""
    meta = body.get("metadata") or {}
    valid = _validate(_CacheBody, body)
    return ModelCache(name=meta["name"], namespace=meta.get("namespace"), spec=valid.spec,
                      generation=meta.get("generation"), uid=meta.get("uid"),
                      status=dict(body.get("status") or {}))
