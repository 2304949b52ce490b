{{/*
The pod spec of a model workload without the operator: the Go-template twin of the operator's
pod spec in operator/modelservice/placement/builders.py. tests/chart/test_parity.py renders both from the
same values and compares the whole Deployment and Service, less a commented list of intended
differences, so a change here without the same change there fails the suite.
Argument: dict "root" $ "component" name "resolved" (embedding-images.model.resolve).
*/}}
{{- define "embedding-images.model.podSpec" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .component -}}
{{- $r := .resolved -}}
{{- $tei := eq $r.engine "tei" -}}
{{- $containerPort := ternary 8080 8000 $tei -}}
{{- $gpu := and $r.variant $r.variant.gpu -}}
{{- $ea := default dict $v.engineArgs -}}
{{- /* with a model cache (CacheMount): its claim read-only at /models, the model's directory there */ -}}
{{- $modelCache := include "embedding-images.model.cacheSpec" (dict "root" $root "component" .component) | default "{}" | fromJson -}}
{{- $source := $v.model -}}
{{- if $modelCache -}}
{{- $source = include "embedding-images.model.cachePath" $modelCache -}}
{{- end -}}
{{- /* node pinning: the product when named, else the architecture's compute capability */ -}}
{{- $nodeSelector := dict -}}
{{- if $gpu -}}
{{- if $v.gpu.product -}}
{{- $_ := set $nodeSelector "nvidia.com/gpu.product" $v.gpu.product -}}
{{- else -}}
{{- $cap := splitList "." (first $r.variant.computeCapabilities | toString) -}}
{{- $_ := set $nodeSelector "nvidia.com/gpu.compute.major" (index $cap 0) -}}
{{- $_ := set $nodeSelector "nvidia.com/gpu.compute.minor" (index $cap 1) -}}
{{- end -}}
{{- end -}}
{{- $nodeSelector = merge $nodeSelector (default dict $v.nodeSelector) -}}
{{- $tolerations := default list $v.tolerations -}}
{{- if $gpu -}}
{{- $tolerations = append $tolerations (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule") -}}
{{- end -}}
{{- $resources := deepCopy (default dict $v.resources) -}}
{{- /* the reranker's memory bound when the values name no memory (operator: reranker_memory) */ -}}
{{- if and (not $tei) (not (or (hasKey (default dict $resources.requests) "memory") (hasKey (default dict $resources.limits) "memory"))) -}}
{{- $memory := "4096Mi" -}}
{{- if not $gpu -}}
{{- $rows := max (int (default 8192 $ea.maxBatchTokens)) (int (default 8192 $ea.maxLength)) -}}
{{- $memory = printf "%dMi" (add 3840 (div (add (mul $rows 15) 99) 100)) -}}
{{- end -}}
{{- $_ := set $resources "requests" (merge (dict "memory" $memory) (default dict $resources.requests)) -}}
{{- $_ := set $resources "limits" (merge (dict "memory" $memory) (default dict $resources.limits)) -}}
{{- end -}}
{{- if $gpu -}}
{{- $limits := default dict $resources.limits -}}
{{- $_ := set $limits "nvidia.com/gpu" $r.gpuCount -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- /* the name in the engine's answers: engineArgs.servedModelName, else the model's (the ModelService's) name */ -}}
{{- $served := $ea.servedModelName | default (include "embedding-images.model.fullname" (dict "root" $root "component" .component)) -}}
{{- $env := list -}}
{{- $args := list -}}
{{- if $tei -}}
{{- $args = list "--model-id" $source "--port" (toString $containerPort) "--hostname" "0.0.0.0" "--served-model-name" $served -}}
{{- if not $modelCache }}{{ with $v.revision }}{{ $args = concat $args (list "--revision" .) }}{{ end }}{{ end -}}
{{- /* CPU: float32 unless the values name a dtype (TEI without MKL/ORT defaults to float16) */ -}}
{{- $teiArgs := deepCopy $ea -}}
{{- if and (not $gpu) (not (hasKey $teiArgs "dtype")) }}{{ $_ := set $teiArgs "dtype" "float32" }}{{ end -}}
{{- range $flag := list (list "--max-batch-tokens" "maxBatchTokens") (list "--max-client-batch-size" "maxClientBatchSize") (list "--max-concurrent-requests" "maxConcurrentRequests") (list "--pooling" "pooling") (list "--dtype" "dtype") }}
{{- if hasKey $teiArgs (index $flag 1) }}{{ $args = concat $args (list (index $flag 0) (include "embedding-images.scalar" (index $teiArgs (index $flag 1)))) }}{{ end }}
{{- end -}}
{{- if $ea.autoTruncate }}{{ $args = append $args "--auto-truncate" }}{{ end -}}
{{- range $flag := list (list "--max-batch-requests" "maxBatchRequests") (list "--payload-limit" "payloadLimit") (list "--default-prompt" "defaultPrompt") (list "--default-prompt-name" "defaultPromptName") }}
{{- if hasKey $ea (index $flag 1) }}{{ $args = concat $args (list (index $flag 0) (include "embedding-images.scalar" (index $ea (index $flag 1)))) }}{{ end }}
{{- end -}}
{{- $env = append $env (dict "name" "HUGGINGFACE_HUB_CACHE" "value" "/data") -}}
{{- /* TEI's log filter: hides the start-up line that prints the API key (operator: TEI_LOG_LEVEL) */ -}}
{{- $env = append $env (dict "name" "LOG_LEVEL" "value" "info,text_embeddings_router=warn,text_embeddings_router::http=info") -}}
{{- with $ea.apiKeySecretRef }}{{ $env = append $env (include "embedding-images.secretEnv" (list "API_KEY" .) | fromJson) }}{{ end -}}
{{- else -}}
{{- $env = append $env (dict "name" "RERANKER_MODEL" "value" $source) -}}
{{- $env = append $env (dict "name" "RERANKER_SERVED_MODEL_NAME" "value" $served) -}}
{{- $env = append $env (dict "name" "RERANKER_HOST" "value" "0.0.0.0") -}}
{{- $env = append $env (dict "name" "RERANKER_PORT" "value" (toString $containerPort)) -}}
{{- $env = append $env (dict "name" "RERANKER_DEVICE" "value" (ternary "cuda" "cpu" $gpu)) -}}
{{- range $var := list (list "RERANKER_BATCH_TOKENS" "maxBatchTokens") (list "RERANKER_MAX_LENGTH" "maxLength") (list "RERANKER_DTYPE" "dtype") (list "RERANKER_MAX_DOCUMENTS" "maxDocuments") (list "RERANKER_INSTRUCTION" "instruction") (list "RERANKER_PROMPT_CACHE_TOKENS" "promptCacheTokens") }}
{{- if hasKey $ea (index $var 1) }}{{ $env = append $env (dict "name" (index $var 0) "value" (include "embedding-images.scalar" (index $ea (index $var 1)))) }}{{ end }}
{{- end -}}
{{- with $ea.apiKeySecretRef }}{{ $env = append $env (include "embedding-images.secretEnv" (list "RERANKER_API_KEY" .) | fromJson) }}{{ end -}}
{{- $env = append $env (dict "name" "HF_HOME" "value" "/data") -}}
{{- end -}}
{{- if $modelCache -}}
{{- /* every file is on the read-only volume: the pods never ask the Hub (nor need its token) */ -}}
{{- $env = append $env (dict "name" "HF_HUB_OFFLINE" "value" "1") -}}
{{- else -}}
{{- with $v.hfTokenSecretRef -}}
{{- $env = append $env (include "embedding-images.secretEnv" (list "HF_TOKEN" .) | fromJson) -}}
{{- end -}}
{{- end -}}
{{- $env = concat $env (default list $v.env) -}}
{{- $pod := include "embedding-images.model.pod" (dict "root" $root "component" .component) | fromJson -}}
{{- with (include "embedding-images.pullSecretNames" (list $root.Values.imagePullSecrets (default list $pod.imagePullSecrets))) }}
imagePullSecrets:
  {{- range (splitList "," .) }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- /* the model serves HTTP only: no API credentials, no other Services' addresses in its env */}}
automountServiceAccountToken: false
enableServiceLinks: false
{{- if not $tei }}
{{- /* longer than the reranker's RERANKER_SHUTDOWN_DELAY (5 s) + RERANKER_SHUTDOWN_TIMEOUT (30 s) + 5 s */}}
terminationGracePeriodSeconds: 50
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 1000
  runAsGroup: 1000
  fsGroup: 1000
  seccompProfile:
    type: RuntimeDefault
{{- with $pod.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with $pod.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pod.topologySpreadConstraints }}
{{- /* without a labelSelector a constraint counts the model's own pods (the operator's: its selector) */}}
{{- $selector := include "embedding-images.model.podSelector" (dict "root" $root "component" $.component) | fromYaml }}
{{- $spread := list }}
{{- range . }}
{{- if hasKey . "labelSelector" }}
{{- $spread = append $spread . }}
{{- else }}
{{- $spread = append $spread (merge (dict "labelSelector" (dict "matchLabels" (deepCopy $selector))) .) }}
{{- end }}
{{- end }}
topologySpreadConstraints:
  {{- toYaml $spread | nindent 2 }}
{{- end }}
{{- if $modelCache }}
{{- /* chart-only: the pods wait for their download Job (the operator gates its Deployment instead) */}}
initContainers:
  - name: wait-for-model
    image: {{ include "embedding-images.operator.image" $root | quote }}
    command: [python, -m, modelservice.cache.download]
    args: [--model, {{ $modelCache.model | quote }}, --revision, {{ default "main" $modelCache.revision | quote }}, --dir, /models, --wait]
    resources:
      requests:
        cpu: 10m
        memory: 64Mi
      limits:
        memory: 256Mi
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      runAsNonRoot: true
      capabilities:
        drop: [ALL]
    volumeMounts:
      - name: models
        mountPath: /models
        readOnly: true
{{- end }}
containers:
  - name: {{ ternary "tei" "reranker" $tei }}
    image: {{ $r.image | quote }}
    {{- with $args }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    env:
      {{- toYaml $env | nindent 6 }}
    ports:
      - name: http
        containerPort: {{ $containerPort }}
        protocol: TCP
    startupProbe:
      httpGet:
        path: /health
        port: http
      periodSeconds: 10
      failureThreshold: 180
    readinessProbe:
      httpGet:
        path: /health
        port: http
      periodSeconds: 10
      failureThreshold: 3
    livenessProbe:
      httpGet:
        path: /health
        port: http
      periodSeconds: 20
      failureThreshold: 3
    {{- with $resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      runAsNonRoot: true
      capabilities:
        drop: [ALL]
    volumeMounts:
      - name: cache
        mountPath: /data
      - name: tmp
        mountPath: /tmp
      {{- if $modelCache }}
      - name: models
        mountPath: /models
        readOnly: true
      {{- end }}
volumes:
  - name: cache
    {{- if $v.cache.existingClaim }}
    persistentVolumeClaim:
      claimName: {{ $v.cache.existingClaim }}
    {{- else }}
    emptyDir:
      {{- with $v.cache.sizeLimit }}
      sizeLimit: {{ . }}
      {{- end }}
    {{- end }}
  - name: tmp
    emptyDir: {}
  {{- if $modelCache }}
  - name: models
    persistentVolumeClaim:
      claimName: {{ include "embedding-images.model.cacheClaim" (include "embedding-images.model.fullname" (dict "root" $root "component" .component)) }}
      readOnly: true
  {{- end }}
{{- end -}}
