{{/*
Names. Kubernetes names are at most 63 characters; KubeRay limits RayService and RayJob names to 47
(it appends a 6-character suffix to name the Ray cluster, whose name it caps at 53) and wants DNS-1035
labels (a letter first).
*/}}
{{- define "lungsearch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lungsearch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the RayService (and prefix of Ray objects): at most 47 characters. */}}
{{- define "lungsearch.rayName" -}}
{{- include "lungsearch.fullname" . | trunc 47 | trimSuffix "-" }}
{{- end }}

{{/* A RayJob name: <prefix>-<job>-<runId>, at most 47 characters. Call with (list $ "train"). */}}
{{- define "lungsearch.jobName" -}}
{{- $root := index . 0 }}
{{- $suffix := printf "-%s-%s" (index . 1) $root.Values.jobs.runId }}
{{- $prefix := include "lungsearch.fullname" $root | trunc (int (sub 47 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s%s" $prefix $suffix }}
{{- end }}

{{- define "lungsearch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lungsearch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lungsearch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lungsearch.labels" -}}
helm.sh/chart: {{ include "lungsearch.chart" . }}
{{ include "lungsearch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lungsearch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lungsearch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lungsearch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lungsearch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "lungsearch.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "lungsearch.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "lungsearch.serveServiceName" -}}
{{- printf "%s-serve" (include "lungsearch.rayName" .) }}
{{- end }}

{{- define "lungsearch.registryClaim" -}}
{{- default (printf "%s-registry" (include "lungsearch.fullname" .)) .Values.registry.persistence.existingClaim }}
{{- end }}

{{/*
Milvus. The in-cluster server's Service follows the Milvus chart's own fullname rule (release name,
plus "-milvus" unless the release name already contains it; fullnameOverride wins).
*/}}
{{- define "lungsearch.milvusFullname" -}}
{{- if .Values.milvus.fullnameOverride }}
{{- .Values.milvus.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "milvus" .Values.milvus.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lungsearch.milvusUri" -}}
{{- if .Values.milvus.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "lungsearch.milvusFullname" .) .Release.Namespace (int .Values.milvus.port) }}
{{- else if .Values.milvus.uri }}
{{- .Values.milvus.uri }}
{{- else }}
{{- fail "lungsearch: set milvus.enabled=true (in-cluster Milvus) or milvus.uri (an external Milvus server): several Serve replicas cannot share a milvus-lite file" }}
{{- end }}
{{- end }}

{{/* Every replica and job must share one HMAC key: the Secret's, else one file on the shared registry volume. */}}
{{- define "lungsearch.hmacKeyFile" -}}
{{- if .Values.secrets.hmacKey.name }}
{{- printf "/etc/lungsearch/hmac/%s" .Values.secrets.hmacKey.key }}
{{- else }}
{{- printf "%s/data/hmac.key" .Values.registry.mountPath }}
{{- end }}
{{- end }}

{{- define "lungsearch.tokensFile" -}}
{{- if .Values.secrets.apiTokens.name }}
{{- printf "/etc/lungsearch/auth/%s" .Values.secrets.apiTokens.key }}
{{- end }}
{{- end }}

{{- define "lungsearch.artifactsDir" -}}
{{- default (printf "%s/artifacts" .Values.registry.mountPath) .Values.registry.objectStore.uri }}
{{- end }}

{{/*
The serveConfigV2 document: values.serve with applications and deployments turned from maps (keyed by
name, so a single value can be overridden) into Ray's lists, sorted by name, and the cluster-specific
args (artifacts_dir, milvus_uri) filled in when left empty.
*/}}
{{- define "lungsearch.serveConfig" -}}
{{- $cfg := omit .Values.serve "applications" | deepCopy }}
{{- $apps := list }}
{{- range $appName := keys .Values.serve.applications | sortAlpha }}
{{- $app := index $.Values.serve.applications $appName | deepCopy }}
{{- $deps := list }}
{{- range $depName := keys (default dict $app.deployments) | sortAlpha }}
{{- $deps = append $deps (merge (dict "name" $depName) (index $app.deployments $depName)) }}
{{- end }}
{{- $args := default dict $app.args }}
{{- if hasKey $args "artifacts_dir" }}
{{- if not $args.artifacts_dir }}
{{- $_ := set $args "artifacts_dir" (include "lungsearch.artifactsDir" $) }}
{{- end }}
{{- end }}
{{- if hasKey $args "milvus_uri" }}
{{- if not $args.milvus_uri }}
{{- $_ := set $args "milvus_uri" (include "lungsearch.milvusUri" $) }}
{{- end }}
{{- end }}
{{- if hasKey $args "hmac_key_file" }}
{{- if not $args.hmac_key_file }}
{{- $_ := set $args "hmac_key_file" (include "lungsearch.hmacKeyFile" $) }}
{{- end }}
{{- end }}
{{- if hasKey $args "tokens_file" }}
{{- if not $args.tokens_file }}
{{- $_ := set $args "tokens_file" (include "lungsearch.tokensFile" $) }}
{{- end }}
{{- end }}
{{- $out := omit $app "deployments" "args" }}
{{- $_ := set $out "name" $appName }}
{{- if $app.args }}
{{- $_ := set $out "args" $args }}
{{- end }}
{{- if $deps }}
{{- $_ := set $out "deployments" $deps }}
{{- end }}
{{- $apps = append $apps $out }}
{{- end }}
{{- $_ := set $cfg "applications" $apps }}
{{- toYaml $cfg }}
{{- end }}

{{/* Environment of every Ray container (Serve replicas and job drivers/workers alike). */}}
{{- define "lungsearch.rayEnv" -}}
- name: LUNGSEARCH_ARTIFACTS_DIR
  value: {{ include "lungsearch.artifactsDir" . | quote }}
- name: LUNGSEARCH_DATA_DIR
  value: {{ printf "%s/data" .Values.registry.mountPath | quote }}
- name: LUNGSEARCH_MILVUS_URI
  value: {{ include "lungsearch.milvusUri" . | quote }}
{{- with .Values.milvus.tokenSecret.name }}
- name: LUNGSEARCH_MILVUS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.milvus.tokenSecret.key }}
{{- end }}
{{- if .Values.secrets.apiTokens.name }}
- name: LUNGSEARCH_TOKENS_FILE
  value: {{ include "lungsearch.tokensFile" . | quote }}
{{- end }}
- name: LUNGSEARCH_HMAC_KEY_FILE
  value: {{ include "lungsearch.hmacKeyFile" . | quote }}
- name: LUNGSEARCH_GRPC_PORT
  value: {{ .Values.serve.grpc_options.port | quote }}
# Nothing downloads at run time, and no usage statistics leave the hospital.
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
# The root filesystem is read-only: home and caches live on the /tmp volume.
- name: HOME
  value: /tmp/home
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Ray Serve's request-path mode on every container of the serving cluster (Serve reads it at import in
each process: controller, proxies, replicas). The same variables as lungsearch.runtime.SERVE_MODES
(tests/charts/test_chart.py compares them).
*/}}
{{- define "lungsearch.serveModeEnv" -}}
{{- if eq .Values.ray.serveMode "throughput" }}
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
# keep the proxy: one address for clients, the TLS terminator and the serve Service
- name: RAY_SERVE_ENABLE_DIRECT_INGRESS
  value: "0"
# log lines written at once (a crashed replica loses none)
- name: RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE
  value: "1"
# replica stderr stays a stream (redirected into Serve's logger, later log lines were lost)
- name: RAY_SERVE_LOG_TO_STDERR
  value: "1"
{{- end }}
{{- end }}

{{- define "lungsearch.rayEnvFrom" -}}
{{- with .Values.registry.objectStore.secretName }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end }}

{{- define "lungsearch.rayVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
- name: profiles
  mountPath: {{ printf "%s/configs" .Values.workingDir }}
  readOnly: true
{{- if .Values.registry.persistence.enabled }}
- name: registry
  mountPath: {{ .Values.registry.mountPath }}
{{- end }}
{{- if .Values.secrets.apiTokens.name }}
- name: api-tokens
  mountPath: /etc/lungsearch/auth
  readOnly: true
{{- end }}
{{- if .Values.secrets.hmacKey.name }}
- name: hmac-key
  mountPath: /etc/lungsearch/hmac
  readOnly: true
{{- end }}
{{- end }}

{{- define "lungsearch.rayVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.ray.tmpSize }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.ray.shmSize }}
- name: profiles
  configMap:
    name: {{ include "lungsearch.fullname" . }}-profiles
{{- if .Values.registry.persistence.enabled }}
- name: registry
  persistentVolumeClaim:
    claimName: {{ include "lungsearch.registryClaim" . }}
{{- end }}
{{- if .Values.secrets.apiTokens.name }}
- name: api-tokens
  secret:
    secretName: {{ .Values.secrets.apiTokens.name }}
    defaultMode: 0440
{{- end }}
{{- if .Values.secrets.hmacKey.name }}
- name: hmac-key
  secret:
    secretName: {{ .Values.secrets.hmacKey.name }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/*
A Ray container. Call with (dict "root" $ "kind" "head"|"worker" "resources" ... "gpus" N "serve" bool).
The Ray container must be the first container of the pod (KubeRay's RayContainerIndex).
*/}}
{{- define "lungsearch.rayContainer" -}}
{{- $root := .root -}}
- name: {{ ternary "ray-head" "ray-worker" (eq .kind "head") }}
  image: {{ include "lungsearch.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  workingDir: {{ $root.Values.workingDir }}
  {{- $res := deepCopy (default dict .resources) }}
  {{- if gt (int (default 0 .gpus)) 0 }}
  {{- $limits := default dict $res.limits }}
  {{- $_ := set $limits "nvidia.com/gpu" (int .gpus) }}
  {{- $_ := set $res "limits" $limits }}
  {{- end }}
  resources:
    {{- toYaml $res | nindent 4 }}
  ports:
    {{- if eq .kind "head" }}
    - name: gcs-server
      containerPort: 6379
    - name: dashboard
      containerPort: 8265
    - name: client
      containerPort: 10001
    {{- end }}
    {{- if .serve }}
    - name: serve
      containerPort: {{ $root.Values.serve.http_options.port }}
    - name: grpc
      containerPort: {{ $root.Values.serve.grpc_options.port }}
    {{- end }}
    - name: metrics
      containerPort: {{ $root.Values.metrics.port }}
  env:
    {{- include "lungsearch.rayEnv" $root | nindent 4 }}
    {{- if .serve }}
    {{- include "lungsearch.serveModeEnv" $root | nindent 4 }}
    {{- end }}
  {{- with (include "lungsearch.rayEnvFrom" $root) }}
  {{- . | nindent 2 }}
  {{- end }}
  volumeMounts:
    {{- include "lungsearch.rayVolumeMounts" $root | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
{{- end }}

{{/*
A Ray pod template. Call with (dict "root" $ "kind" "head"|"worker" "component" "ray"|"ray-job"
"group" <worker group values or nil> "resources" ... "gpus" N "serve" bool "apiToken" bool).
*/}}
{{- define "lungsearch.rayPodTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "lungsearch.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    app.kubernetes.io/part-of: lungsearch
  annotations:
    # A changed profile changes the Ray cluster spec, so KubeRay rolls a new cluster that loads it.
    lungsearch.io/profiles-checksum: {{ include (print $root.Template.BasePath "/configmap-profiles.yaml") $root | sha256sum | trunc 16 | quote }}
spec:
  serviceAccountName: {{ include "lungsearch.serviceAccountName" $root }}
  # Only the head's autoscaler sidecar talks to the Kubernetes API.
  automountServiceAccountToken: {{ .apiToken | default false }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    {{- include "lungsearch.rayContainer" . | nindent 4 }}
  volumes:
    {{- include "lungsearch.rayVolumes" $root | nindent 4 }}
  {{- $sched := ternary $root.Values.ray.head (default dict .group) (eq .kind "head") }}
  {{- with $sched.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $sched.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $sched.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* rayStartParams as strings (KubeRay wants map[string]string). */}}
{{- define "lungsearch.rayStartParams" -}}
{{- $out := dict }}
{{- range $k, $v := . }}
{{- $_ := set $out $k (toString $v) }}
{{- end }}
{{- toYaml $out }}
{{- end }}
