{{/*
Names, labels and the GPU variant lookup shared by every template.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "embedding-images.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Release-scoped base name (63 characters at most, the DNS label limit). When the release name
already contains the chart name it is used as is, so `helm install embedding-images .` gives
`embedding-images`, not `embedding-images-embedding-images`.
*/}}
{{- define "embedding-images.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>, truncated to 63 characters. Argument: dict "root" $ "component" name. */}}
{{- define "embedding-images.componentFullname" -}}
{{- printf "%s-%s" (include "embedding-images.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "embedding-images.operator.fullname" -}}
{{- include "embedding-images.componentFullname" (dict "root" . "component" "operator") -}}
{{- end -}}

{{/*
Name of a model workload (ModelService, or Deployment and Service without the operator):
values <component>.name, else <fullname>-<component>. Argument: dict "root" $ "component" name.
*/}}
{{- define "embedding-images.model.fullname" -}}
{{- $values := index .root.Values .component -}}
{{- if $values.name -}}
{{- $values.name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "embedding-images.componentFullname" . -}}
{{- end -}}
{{- end -}}

{{- define "embedding-images.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: immutable once a Deployment exists, so only name, instance and component.
Argument: dict "root" $ "component" name.
*/}}
{{- define "embedding-images.selectorLabels" -}}
app.kubernetes.io/name: {{ include "embedding-images.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of an object: selector labels, chart, version, manager and commonLabels. */}}
{{- define "embedding-images.labels" -}}
{{- include "embedding-images.checkPodLabels" (list "commonLabels" .root.Values.commonLabels) -}}
helm.sh/chart: {{ include "embedding-images.chart" .root }}
{{ include "embedding-images.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: embedding-images
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* commonAnnotations as a metadata.annotations block (nothing when empty). */}}
{{- define "embedding-images.annotations" -}}
{{- with .Values.commonAnnotations -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* The shared GPU variant table, files/variants.yaml, as a dict. */}}
{{- define "embedding-images.variantTable" -}}
{{- $raw := .Files.Get "files/variants.yaml" -}}
{{- if not $raw -}}
{{- fail "files/variants.yaml is missing from the chart: it is the one GPU variant table and cannot be left out" -}}
{{- end -}}
{{- $raw -}}
{{- end -}}

{{/* The operator's service account name. */}}
{{- define "embedding-images.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "embedding-images.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator's image reference (tag defaults to the chart's appVersion). */}}
{{- define "embedding-images.operator.image" -}}
{{- $img := .Values.operator.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The names of the pull secrets of one or more imagePullSecrets lists, in order, each once, joined
with ",". Argument: a list of lists of {name}.
*/}}
{{- define "embedding-images.pullSecretNames" -}}
{{- $names := list -}}
{{- range $list := . }}{{ range $list }}{{ $names = append $names .name }}{{ end }}{{ end -}}
{{- $names | uniq | join "," -}}
{{- end -}}

{{/*
Fails when a label map sets a label that selects a model's pods or names their manager (the
operator's RESERVED_POD_LABELS: the CRD refuses them in spec.pod.labels, the operator in
--pod-labels). Argument: list "<values key>" map.
*/}}
{{- define "embedding-images.checkPodLabels" -}}
{{- $reserved := list "serving.embedding-images.io/modelservice" "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" "app.kubernetes.io/managed-by" -}}
{{- $bad := list -}}
{{- range $k, $_ := (index . 1 | default dict) }}{{ if has $k $reserved }}{{ $bad = append $bad $k }}{{ end }}{{ end -}}
{{- with $bad -}}
{{- fail (printf "%s sets %s: these labels select the model's pods (or name who manages them) and cannot be changed; use other keys" (index $ 0) (join ", " (sortAlpha .))) -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets block for a pod spec (nothing when the list is empty). */}}
{{- define "embedding-images.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* "true" unless the operator serves every namespace (operator.clusterWide). */}}
{{- define "embedding-images.operator.namespaced" -}}
{{- if not .Values.operator.clusterWide -}}true{{- end -}}
{{- end -}}

{{/*
The namespaces the operator serves, as a JSON list: operator.watchNamespaces, or the release
namespace; empty when cluster-wide. Fails on contradictory values and on a refused namespace.
A release upgraded with --reuse-values from a chart without clusterWide/refusedNamespaces reads
them as unset: namespaced, and the operator's own default refused list.
*/}}
{{- define "embedding-images.operator.watchNamespaces" -}}
{{- $op := .Values.operator -}}
{{- if $op.clusterWide -}}
{{- if $op.watchNamespaces -}}
{{- fail (printf "operator.clusterWide is true and operator.watchNamespaces lists %s: choose one (clusterWide serves every namespace; watchNamespaces only those listed)" (join ", " $op.watchNamespaces)) -}}
{{- end -}}
[]
{{- else -}}
{{- $watched := $op.watchNamespaces | default (list .Release.Namespace) -}}
{{- range $watched -}}
{{- if has . ($op.refusedNamespaces | default list) -}}
{{- fail (printf "the operator would serve namespace %s, which operator.refusedNamespaces refuses (a ModelService there could run as its ServiceAccounts and mount its Secrets); install into an application namespace or set operator.watchNamespaces" .) -}}
{{- end -}}
{{- end -}}
{{- toJson $watched -}}
{{- end -}}
{{- end -}}

{{/*
Upgrading a release whose operator served every namespace (the chart's default before
operator.clusterWide existed) with neither clusterWide nor watchNamespaces set would silently
narrow it to the release namespace, and the ModelServices elsewhere would no longer be reconciled.
Fails instead, naming them and the values that keep or choose the scope. ModelServices of another
release of this chart are left out: that release runs its own operator. Reads the cluster with
lookup, so `helm template` and client-side dry runs skip it.
*/}}
{{- define "embedding-images.operator.checkUpgradeScope" -}}
{{- $op := .Values.operator -}}
{{- if and .Release.IsUpgrade $op.enabled (not $op.clusterWide) (not $op.watchNamespaces) (.Capabilities.APIVersions.Has "serving.embedding-images.io/v1alpha1/ModelService") -}}
{{- $old := lookup "rbac.authorization.k8s.io/v1" "ClusterRole" "" (include "embedding-images.operator.fullname" .) -}}
{{- $wasClusterWide := false -}}
{{- range (get $old "rules" | default list) -}}
{{- if has "deployments" (.resources | default list) -}}{{- $wasClusterWide = true -}}{{- end -}}
{{- end -}}
{{- if $wasClusterWide -}}
{{- $elsewhere := list -}}
{{- range (get (lookup "serving.embedding-images.io/v1alpha1" "ModelService" "" "") "items" | default list) -}}
{{- $owner := .metadata.annotations | default dict -}}
{{- $otherRelease := and (get $owner "meta.helm.sh/release-name") (ne (get $owner "meta.helm.sh/release-namespace") $.Release.Namespace) -}}
{{- if and (ne .metadata.namespace $.Release.Namespace) (not $otherRelease) -}}{{- $elsewhere = append $elsewhere .metadata.namespace -}}{{- end -}}
{{- end -}}
{{- if $elsewhere -}}
{{- $others := $elsewhere | uniq | sortAlpha -}}
{{- fail (printf "this release's operator serves every namespace, and ModelServices exist outside namespace %s (in %s); the chart now serves only the release namespace unless told otherwise, which would leave those unreconciled. Keep the previous scope: --set operator.clusterWide=true. Or serve the namespaces you name: --set 'operator.watchNamespaces={%s}' (a Role in each). See the chart README, RBAC." .Release.Namespace (join ", " $others) (join "," (prepend $others .Release.Namespace))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Resolves a model section (embedding or reranker) the way the operator resolves a ModelService,
and fails on contradictory values. Argument: dict "root" $ "component" name. Returns JSON:
  task      embed | rerank
  engine    tei | reranker (auto resolved)
  variant   the files/variants.yaml entry (null for accelerator auto under the operator)
  image     full image reference (empty when the variant is left to the operator)
  gpuCount  GPUs per pod (0 for cpu)
*/}}
{{- define "embedding-images.model.resolve" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $v := index $root.Values $c -}}
{{- $table := include "embedding-images.variantTable" $root | fromYaml -}}
{{- $task := ternary "embed" "rerank" (eq $c "embedding") -}}
{{- $gpu := default dict $v.gpu -}}
{{- $count := int (default 0 $gpu.count) -}}
{{- $product := default "" $gpu.product -}}
{{- $names := list -}}
{{- range $table.variants }}{{ $names = append $names .name }}{{ end -}}
{{- if and (ne $v.accelerator "auto") (not (has $v.accelerator $names)) -}}
{{- fail (printf "%s.accelerator=%q is not a known accelerator; use auto or one of: %s" $c $v.accelerator (join ", " $names)) -}}
{{- end -}}
{{- $productCap := "" -}}
{{- if $product -}}
{{- if not (hasKey $table.products $product) -}}
{{- fail (printf "%s.gpu.product=%q is not in files/variants.yaml; known products: %s (or name the architecture in %s.accelerator)" $c $product (join ", " (keys $table.products | sortAlpha)) $c) -}}
{{- end -}}
{{- $productCap = index $table.products $product | toString -}}
{{- end -}}
{{- if eq $v.accelerator "cpu" -}}
{{- if gt $count 0 -}}
{{- fail (printf "%s.accelerator=cpu contradicts %s.gpu.count=%d: set gpu.count to 0, or choose a GPU accelerator" $c $c $count) -}}
{{- end -}}
{{- if $product -}}
{{- fail (printf "%s.accelerator=cpu contradicts %s.gpu.product=%q: clear gpu.product, or set accelerator to auto or the product's architecture" $c $c $product) -}}
{{- end -}}
{{- end -}}
{{- $variant := dict -}}
{{- if and (eq $v.accelerator "auto") $product -}}
{{- range $table.variants }}{{ if has $productCap (default list .computeCapabilities) }}{{ $variant = . }}{{ end }}{{ end -}}
{{- if not $variant -}}
{{- fail (printf "%s.gpu.product=%q has compute capability %s, which no variant in files/variants.yaml serves" $c $product $productCap) -}}
{{- end -}}
{{- else if ne $v.accelerator "auto" -}}
{{- range $table.variants }}{{ if eq .name $v.accelerator }}{{ $variant = . }}{{ end }}{{ end -}}
{{- if and $product (not (has $productCap (default list $variant.computeCapabilities))) -}}
{{- fail (printf "%s.gpu.product=%q (compute capability %s) does not run the %s image: set %s.accelerator to auto, or to the product's architecture" $c $product $productCap $v.accelerator $c) -}}
{{- end -}}
{{- else if not $root.Values.operator.enabled -}}
{{- fail (printf "%s.accelerator=auto needs the operator, which chooses the GPU architecture from the cluster's nodes; with operator.enabled=false set %s.accelerator to cpu or a GPU architecture (%s), or set %s.gpu.product" $c $c (join ", " $names) $c) -}}
{{- end -}}
{{- if and $variant $variant.gpu (eq $count 0) -}}
{{- $count = 1 -}}
{{- end -}}
{{- $engine := $v.engine -}}
{{- $qwen := regexMatch "(?i)qwen3-reranker" $v.model -}}
{{- if eq $engine "auto" -}}
{{- $engine = ternary "reranker" "tei" (and (eq $task "rerank") $qwen) -}}
{{- end -}}
{{- if and (eq $engine "reranker") (eq $task "embed") -}}
{{- fail (printf "%s.engine=reranker cannot serve embeddings: the reranker service only reranks; use engine auto or tei" $c) -}}
{{- end -}}
{{- if and (eq $engine "tei") $qwen -}}
{{- fail (printf "%s.model=%q cannot run on TEI (Qwen3-Reranker is a causal LM; TEI refuses it at start-up): use engine auto or reranker" $c $v.model) -}}
{{- end -}}
{{- /* engine arguments the resolved engine does not understand are refused, as the operator does */ -}}
{{- $ea := default dict $v.engineArgs -}}
{{- if and (eq $engine "reranker") $v.revision (not ($v.modelCache | default dict).enabled) -}}
{{- fail (printf "%s.revision is not a setting of the reranker engine: clear it, or pin the model with %s.modelCache (the download fetches the revision)" $c $c) -}}
{{- end -}}
{{- $foreign := list "maxLength" "maxDocuments" "instruction" "promptCacheTokens" -}}
{{- if eq $engine "reranker" -}}
{{- $foreign = list "maxBatchRequests" "maxClientBatchSize" "maxConcurrentRequests" "pooling" "autoTruncate" "payloadLimit" "defaultPrompt" "defaultPromptName" -}}
{{- end -}}
{{- $wrong := list -}}
{{- range $foreign }}{{ if hasKey $ea . }}{{ $wrong = append $wrong (printf "%s.engineArgs.%s" $c .) }}{{ end }}{{ end -}}
{{- with $wrong -}}
{{- fail (printf "%s: not an argument of engine %s; remove it, or choose the other engine in %s.engine" (join ", " .) $engine $c) -}}
{{- end -}}
{{- if and (eq $engine "reranker") (hasKey $ea "maxBatchTokens") (lt (int $ea.maxBatchTokens) 256) -}}
{{- fail (printf "%s.engineArgs.maxBatchTokens=%d: the reranker engine needs at least 256 (RERANKER_BATCH_TOKENS)" $c (int $ea.maxBatchTokens)) -}}
{{- end -}}
{{- if and (eq $engine "tei") (eq (toString (default "" $ea.dtype)) "bfloat16") -}}
{{- fail (printf "%s.engineArgs.dtype=bfloat16 is not a TEI --dtype: use float16 or float32" $c) -}}
{{- end -}}
{{- $image := $v.image -}}
{{- if and (not $image) $variant -}}
{{- if eq $engine "tei" -}}
{{- $image = printf "%s:%s" $table.tei.repository (toString $variant.teiTag) -}}
{{- else -}}
{{- $image = printf "%s:%s" $table.reranker.repository (toString $variant.rerankerTag) -}}
{{- end -}}
{{- end -}}
{{- dict "task" $task "engine" $engine "variant" (default nil $variant) "image" $image "gpuCount" $count | toJson -}}
{{- end -}}

{{/* The chart's CRDs, plural -> kind (crds/<plural>.yaml, templates/crds/<plural>.yaml). */}}
{{- define "embedding-images.crd.kinds" -}}
{{- dict "modelservices" "ModelService" "modelcaches" "ModelCache" | toJson -}}
{{- end -}}

{{/*
"true" when this release renders the CRD of `plural` from templates/crds: when the CRD is in the
cluster and this release owns it (a release installed with the chart's earlier layout, which
rendered its CRDs from templates: Helm would otherwise delete them as resources it no longer
renders), or when an upgrade finds it missing (a release from before that CRD existed: Helm
installs crds/ on the first install only). Every other install gets the CRDs from crds/, which
Helm creates before it renders anything and never changes afterwards. `helm template` has no
cluster and is no upgrade: never "true" there, so a GitOps render (--include-crds) holds each CRD
once. Argument: dict "root" $ "plural" modelservices|modelcaches.
*/}}
{{- define "embedding-images.crd.fromTemplates" -}}
{{- $crd := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" (printf "%s.serving.embedding-images.io" .plural) -}}
{{- if $crd -}}
{{- $ann := default dict $crd.metadata.annotations -}}
{{- if and (eq (index $ann "meta.helm.sh/release-name" | default "") .root.Release.Name) (eq (index $ann "meta.helm.sh/release-namespace" | default "") .root.Release.Namespace) -}}
true
{{- end -}}
{{- else if .root.Release.IsUpgrade -}}
true
{{- end -}}
{{- end -}}

{{/*
One of the chart's CRDs, where this release renders it from templates (embedding-images.crd.fromTemplates):
crds/<plural>.yaml (generated from the operator's models, the one source), with the chart's labels
and, unless crds.keep is false, `helm.sh/resource-policy: keep`, so `helm uninstall` never deletes
the CRD and with it every object of its kind in the cluster. Empty for every other release.
Argument: dict "root" $ "plural" modelservices|modelcaches.
*/}}
{{- define "embedding-images.crd" -}}
{{- $root := .root -}}
{{- if and $root.Values.crds.enabled (include "embedding-images.crd.fromTemplates" .) -}}
{{- $file := printf "crds/%s.yaml" .plural -}}
{{- $raw := $root.Files.Get $file -}}
{{- if not $raw -}}
{{- fail (printf "%s is missing from the chart" $file) -}}
{{- end -}}
{{- $crd := fromYaml $raw -}}
{{- if hasKey $crd "Error" -}}
{{- fail (printf "%s is not valid YAML: %s" $file $crd.Error) -}}
{{- end -}}
{{- $meta := $crd.metadata -}}
{{- $labels := merge (include "embedding-images.labels" (dict "root" $root "component" "crd") | fromYaml) (default dict $meta.labels) -}}
{{- $annotations := merge (deepCopy (default dict $root.Values.commonAnnotations)) (default dict $meta.annotations) -}}
{{- if $root.Values.crds.keep -}}
{{- $_ := set $annotations "helm.sh/resource-policy" "keep" -}}
{{- end -}}
{{- $_ := set $meta "labels" $labels -}}
{{- if $annotations -}}
{{- $_ := set $meta "annotations" $annotations -}}
{{- end -}}
{{- toYaml $crd -}}
{{- end -}}
{{- end -}}

{{/*
An environment variable read from a Secret key (the key defaults to "token"), as JSON: the twin
of the operator's resources._secret_env. Argument: list NAME {name, key}.
*/}}
{{- define "embedding-images.secretEnv" -}}
{{- $ref := index . 1 -}}
{{- dict "name" (index . 0) "valueFrom" (dict "secretKeyRef" (dict "name" $ref.name "key" (default "token" $ref.key))) | toJson -}}
{{- end -}}

{{/*
A scalar value as text, numbers as integers: values files give Helm float64s, which toString
would print as 4e+06. Argument: the value.
*/}}
{{- define "embedding-images.scalar" -}}
{{- if kindIs "float64" . }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- end -}}

{{/*
Labels that select a model's pods, in both modes (PDB, NetworkPolicy, the plain Deployment's
selector). Argument: dict "root" $ "component" name.
*/}}
{{- define "embedding-images.model.podSelector" -}}
{{ include "embedding-images.selectorLabels" . }}
{{- end -}}

{{/*
The ModelService spec of a model section (empty values left out). Also the input of the plain
workloads' checksum/config. Argument: dict "root" $ "component" name.
*/}}
{{- define "embedding-images.model.spec" -}}
{{- $v := index .root.Values .component -}}
{{- $r := include "embedding-images.model.resolve" . | fromJson -}}
{{- $spec := dict "task" $r.task "model" $v.model "engine" $v.engine "accelerator" $v.accelerator "port" (int $v.port) -}}
{{- if not $v.autoscaling.enabled -}}
{{- $_ := set $spec "replicas" (int $v.replicas) -}}
{{- end -}}
{{- $modelCache := include "embedding-images.model.cacheSpec" . -}}
{{- /* with a model cache, the revision and the token are the download's (the pods run offline) */ -}}
{{- $keys := list "image" "runtimeClassName" "resources" "nodeSelector" "tolerations" "affinity" "env" -}}
{{- if not $modelCache -}}
{{- $keys = concat $keys (list "revision" "hfTokenSecretRef") -}}
{{- end -}}
{{- range $key := $keys -}}
{{- with index $v $key -}}
{{- $_ := set $spec $key . -}}
{{- end -}}
{{- end -}}
{{- $engineArgs := dict -}}
{{- range $key, $val := default dict $v.engineArgs -}}
{{- $_ := set $engineArgs $key (ternary (int64 $val) $val (kindIs "float64" $val)) -}}
{{- end -}}
{{- with $engineArgs -}}
{{- $_ := set $spec "engineArgs" . -}}
{{- end -}}
{{- if $v.fallbackToCPU -}}
{{- $_ := set $spec "fallbackToCPU" true -}}
{{- end -}}
{{- $gpu := dict -}}
{{- if (default dict $v.gpu).count -}}
{{- $_ := set $gpu "count" (int $v.gpu.count) -}}
{{- end -}}
{{- if (default dict $v.gpu).product -}}
{{- $_ := set $gpu "product" $v.gpu.product -}}
{{- end -}}
{{- with $gpu -}}
{{- $_ := set $spec "gpu" . -}}
{{- end -}}
{{- $cache := dict -}}
{{- if $modelCache -}}
{{- $_ := set $cache "modelCache" (include "embedding-images.model.fullname" .) -}}
{{- end -}}
{{- if $v.cache.existingClaim -}}
{{- $_ := set $cache "existingClaim" $v.cache.existingClaim -}}
{{- else if $v.cache.sizeLimit -}}
{{- $_ := set $cache "sizeLimit" (toString $v.cache.sizeLimit) -}}
{{- end -}}
{{- with $cache -}}
{{- $_ := set $spec "cache" . -}}
{{- end -}}
{{- with (include "embedding-images.model.pod" . | fromJson) -}}
{{- $_ := set $spec "pod" . -}}
{{- end -}}
{{- toYaml $spec -}}
{{- end -}}

{{/*
A model's pod settings, the ModelService's spec.pod, as JSON ({} when none): its podLabels,
podAnnotations, imagePullSecrets, priorityClassName, topologySpreadConstraints and
serviceAccountName. The chart's own imagePullSecrets, commonLabels and commonAnnotations are not in
it: the operator gets them as its defaults for every ModelService (--image-pull-secrets,
--pod-labels, --pod-annotations). Argument: dict "root" $ "component" name.
*/}}
{{- define "embedding-images.model.pod" -}}
{{- $v := index .root.Values .component -}}
{{- include "embedding-images.checkPodLabels" (list (printf "%s.podLabels" .component) $v.podLabels) -}}
{{- $pod := dict -}}
{{- range $key, $from := dict "labels" "podLabels" "annotations" "podAnnotations" "imagePullSecrets" "imagePullSecrets" "priorityClassName" "priorityClassName" "topologySpreadConstraints" "topologySpreadConstraints" "serviceAccountName" "serviceAccountName" -}}
{{- with index $v $from -}}
{{- $_ := set $pod $key . -}}
{{- end -}}
{{- end -}}
{{- toJson $pod -}}
{{- end -}}

{{/*
The ModelCache spec of a model section as JSON (the chart-only claim and download Job are built
from it too), or empty when <component>.modelCache is off. Fails on values a cache cannot take.
The cache is named like the model's ModelService. Argument: dict "root" $ "component" name.
*/}}
{{- define "embedding-images.model.cacheSpec" -}}
{{- $c := .component -}}
{{- $v := index .root.Values $c -}}
{{- $mc := $v.modelCache | default dict -}}
{{- if $mc.enabled -}}
{{- $name := include "embedding-images.model.fullname" . -}}
{{- if not $mc.size -}}
{{- fail (printf "%s.modelCache.enabled=true needs %s.modelCache.size, the size of the volume the model is fetched into (e.g. 20Gi; room for every revision kept)" $c $c) -}}
{{- end -}}
{{- if $v.cache.existingClaim -}}
{{- fail (printf "%s.modelCache.enabled=true and %s.cache.existingClaim=%q: set one of them (with a model cache, the files come from its volume)" $c $c $v.cache.existingClaim) -}}
{{- end -}}
{{- if not (regexMatch `^[A-Za-z0-9][-\w.]*/[-\w.]+$` $v.model) -}}
{{- fail (printf "%s.modelCache.enabled=true needs a Hugging Face model id (org/name) in %s.model, not %q" $c $c $v.model) -}}
{{- end -}}
{{- if gt (len $name) 52 -}}
{{- fail (printf "%s.modelCache: the cache is named after the model, %s (%d characters), and a ModelCache name has at most 52 (its download Job is named after it): set a shorter %s.name" $c $name (len $name) $c) -}}
{{- end -}}
{{- if and (eq $mc.retention "DeleteWhenUnused") (not .root.Values.operator.enabled) -}}
{{- fail (printf "%s.modelCache.retention=DeleteWhenUnused needs the operator (it deletes the volume when no ModelService uses it); with operator.enabled=false the claim is kept: use Keep" $c) -}}
{{- end -}}
{{- $spec := dict "model" $v.model "size" (include "embedding-images.scalar" $mc.size) "accessMode" $mc.accessMode "retention" $mc.retention -}}
{{- /* the download runs where the model may run: with ReadWriteOnce its node is the model's */ -}}
{{- range $key := list "revision" "hfTokenSecretRef" "nodeSelector" "tolerations" -}}
{{- with index $v $key -}}
{{- $_ := set $spec $key . -}}
{{- end -}}
{{- end -}}
{{- with $mc.storageClassName -}}
{{- $_ := set $spec "storageClassName" . -}}
{{- end -}}
{{- toJson $spec -}}
{{- end -}}
{{- end -}}

{{/*
Where the pods find a cached model: /models/<modelservice.cache.download.model_path(model, revision)>,
i.e. /models/models/<org>--<name>/<revision, each '/' as '--'> (revision main when unset, the
ModelCache's default). Argument: the cacheSpec dict.
*/}}
{{- define "embedding-images.model.cachePath" -}}
{{- $parts := splitn "/" 2 .model -}}
{{- printf "/models/models/%s--%s/%s" $parts._0 $parts._1 (default "main" .revision | replace "/" "--") -}}
{{- end -}}

{{/* The claim of a model cache (modelservice.cache.builders.claim_name). Argument: the cache's name. */}}
{{- define "embedding-images.model.cacheClaim" -}}
{{- printf "modelcache-%s" . -}}
{{- end -}}

{{/*
"true" when the gateway is rendered: gateway.enabled, which defaults (null) to operator.enabled. A
release upgraded with --reuse-values from a chart without the gateway section has none.
*/}}
{{- define "embedding-images.gateway.enabled" -}}
{{- $gw := .Values.gateway | default dict -}}
{{- $on := ternary .Values.operator.enabled $gw.enabled (kindIs "invalid" $gw.enabled) -}}
{{- if and $on (hasKey .Values "gateway") -}}
{{- if not .Values.operator.enabled -}}
{{- fail "gateway.enabled=true needs operator.enabled=true: the gateway routes to ModelServices, which only the operator serves (without it the chart renders plain Deployments and Services)" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{- define "embedding-images.gateway.fullname" -}}
{{- include "embedding-images.componentFullname" (dict "root" . "component" "gateway") -}}
{{- end -}}

{{/* The gateway's service account name. */}}
{{- define "embedding-images.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "embedding-images.gateway.fullname" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The gateway's image reference (tag defaults to the chart's appVersion). */}}
{{- define "embedding-images.gateway.image" -}}
{{- $img := .Values.gateway.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The operator's pods as a NetworkPolicyPeer (JSON): its autoscaler reads the model pods' and the
gateway's /metrics on their http port.
*/}}
{{- define "embedding-images.operator.peer" -}}
{{- $operator := include "embedding-images.selectorLabels" (dict "root" . "component" "operator") | fromYaml -}}
{{- toJson (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace)) "podSelector" (dict "matchLabels" $operator)) -}}
{{- end -}}

{{/*
The label selector of the gateway's pods (`k=v,...`), for the operator's --gateway-selector.
*/}}
{{- define "embedding-images.gateway.selector" -}}
{{- $labels := include "embedding-images.selectorLabels" (dict "root" . "component" "gateway") | fromYaml -}}
{{- $pairs := list -}}
{{- range $k := keys $labels | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%s" $k (get $labels $k)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/*
GATEWAY_NAMESPACES: the namespaces whose ModelServices the gateway routes, the operator's own
(operator.watchNamespaces, or the release namespace), or `*` when the operator is cluster-wide.
*/}}
{{- define "embedding-images.gateway.namespaces" -}}
{{- $watched := include "embedding-images.operator.watchNamespaces" . | fromJsonArray -}}
{{- if $watched -}}{{ join "," $watched }}{{- else -}}*{{- end -}}
{{- end -}}

{{/*
The sources every model's NetworkPolicy admits besides its own namespace (networkPolicy values),
as a JSON list of NetworkPolicyPeers, in this order: the gateway's pods (with the gateway), the
operator's pods (with the operator: its autoscaler reads the pods' /metrics), both by their
selector labels in the release namespace, wherever the model runs; the `helm test` pod (only when
the namespace is not admitted), the metrics scraper, networkPolicy.extraIngressFrom. The operator
gets it as --network-policy-peers; without the operator, templates/models/policies.yaml renders
it. Both then build the same object (tests/chart/test_parity.py).
*/}}
{{- define "embedding-images.networkPolicy.peers" -}}
{{- $np := .Values.networkPolicy -}}
{{- $peers := list -}}
{{- $release := dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace) -}}
{{- if include "embedding-images.gateway.enabled" . -}}
{{- $gateway := include "embedding-images.selectorLabels" (dict "root" . "component" "gateway") | fromYaml -}}
{{- $peers = append $peers (dict "namespaceSelector" $release "podSelector" (dict "matchLabels" $gateway)) -}}
{{- end -}}
{{- if .Values.operator.enabled -}}
{{- $peers = append $peers (include "embedding-images.operator.peer" . | fromJson) -}}
{{- end -}}
{{- if not $np.allowSameNamespace -}}
{{- $test := include "embedding-images.selectorLabels" (dict "root" . "component" "test") | fromYaml -}}
{{- $peers = append $peers (dict "podSelector" (dict "matchLabels" $test)) -}}
{{- end -}}
{{- with $np.metricsScraper -}}
{{- $peers = append $peers . -}}
{{- end -}}
{{- $peers = concat $peers ($np.extraIngressFrom | default list) -}}
{{- toJson $peers -}}
{{- end -}}

{{/*
"true" when the monitor named by `monitor` (serviceMonitor or podMonitor) is to be rendered:
metrics.<monitor>.enabled. Fails when it is asked for but the cluster does not serve the
Prometheus Operator's monitoring.coreos.com/v1 (applying it would fail with "no matches for
kind"), unless metrics.skipCRDCheck says the renderer cannot see the cluster. A release upgraded
with --reuse-values from a chart without the metrics section renders none.
Argument: dict "root" $ "monitor" name.
*/}}
{{- define "embedding-images.metrics.enabled" -}}
{{- $m := .root.Values.metrics | default dict -}}
{{- $kind := ternary "ServiceMonitor" "PodMonitor" (eq .monitor "serviceMonitor") -}}
{{- if (get (get $m .monitor | default dict) "enabled") -}}
{{- if not (or $m.skipCRDCheck (.root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
{{- fail (printf "metrics.%s.enabled=true renders a %s (monitoring.coreos.com/v1), which this cluster does not serve: install the Prometheus Operator (or kube-prometheus-stack) first, or turn metrics.%s.enabled off. Rendering without a cluster (helm template, Argo CD, Flux)? Pass --api-versions monitoring.coreos.com/v1, or set metrics.skipCRDCheck=true" .monitor $kind .monitor) -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/*
The endpoint settings shared by the ServiceMonitor and the PodMonitor: /metrics on the `http`
port (every component serves it there, without an API key), metrics.interval and scrapeTimeout.
*/}}
{{- define "embedding-images.metrics.endpoint" -}}
port: http
path: /metrics
interval: {{ .Values.metrics.interval }}
{{- with .Values.metrics.scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- end -}}
