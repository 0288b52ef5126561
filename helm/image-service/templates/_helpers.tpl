{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "image-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used as the prefix of every resource: the release name, plus the
chart name unless the release name already contains it.
*/}}
{{- define "image-service.fullname" -}}
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

{{- define "image-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "image-service.labels" -}}
helm.sh/chart: {{ include "image-service.chart" . }}
{{ include "image-service.selectorLabels" . }}
app.kubernetes.io/version: {{ include "image-service.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chuizi
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "image-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "image-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "image-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image tag: image.tag, or the chart's appVersion. The schema rejects "latest".
*/}}
{{- define "image-service.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion | toString | trunc 63 }}
{{- end }}

{{- define "image-service.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "image-service.tag" .) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the chart creates from .Values.secrets.
*/}}
{{- define "image-service.secretName" -}}
{{- printf "%s-credentials" (include "image-service.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The ConfigMap's data: the typed values, then .Values.config. The schema
rejects config keys that duplicate a typed value or look like credentials, so
the two never collide and the ConfigMap never holds a secret.
*/}}
{{- define "image-service.configData" -}}
{{- $s := .Values.server -}}
{{- $data := dict
  "IMAGE_SERVICE_GRPC_PORT" $s.port
  "IMAGE_SERVICE_SHUTDOWN_GRACE_S" $s.shutdownGraceSeconds
  "IMAGE_SERVICE_MAX_MESSAGE_BYTES" $s.maxMessageBytes
  "IMAGE_SERVICE_MAX_CONNECTION_AGE_S" $s.maxConnectionAgeSeconds
  "IMAGE_SERVICE_MAX_CONNECTION_AGE_GRACE_S" $s.maxConnectionAgeGraceSeconds
  "IMAGE_SERVICE_KEEPALIVE_TIME_S" $s.keepaliveTimeSeconds
  "IMAGE_SERVICE_KEEPALIVE_TIMEOUT_S" $s.keepaliveTimeoutSeconds
  "IMAGE_SERVICE_DEFAULT_DEADLINE_S" $s.defaultDeadlineSeconds
  "IMAGE_SERVICE_REFLECTION" $s.reflection
  "IMAGE_SERVICE_LOG_LEVEL" .Values.logLevel
  "IMAGE_SERVICE_LOG_FORMAT" .Values.logFormat
  "IMAGE_SERVICE_METRICS" .Values.metrics.enabled
  "IMAGE_SERVICE_METRICS_PORT" .Values.metrics.port
  "IMAGE_SERVICE_STORAGE" .Values.storage.type
  "IMAGE_SERVICE_REST_MAX_UPLOAD_BYTES" .Values.rest.maxUploadBytes
  "IMAGE_SERVICE_REST_UPSTREAM_TIMEOUT_S" .Values.rest.upstreamTimeoutSeconds
  "IMAGE_SERVICE_REST_SHUTDOWN_GRACE_S" .Values.rest.shutdownGraceSeconds
  "IMAGE_SERVICE_AUTH" .Values.auth.mode
-}}
{{- if not .Values.auth.redis.existingSecret }}
{{- /* Without Redis: the embedded key store, in the pod's writable /tmp. */}}
{{- $_ := set $data "IMAGE_SERVICE_AUTH_DB" "/tmp/auth/auth.sqlite3" }}
{{- else }}
{{- $_ := set $data "IMAGE_SERVICE_REDIS_MAX_CONNECTIONS" .Values.auth.redis.maxConnections }}
{{- $_ := set $data "IMAGE_SERVICE_REDIS_POOL_TIMEOUT_S" .Values.auth.redis.poolTimeoutSeconds }}
{{- $_ := set $data "IMAGE_SERVICE_REDIS_TIMEOUT_S" .Values.auth.redis.timeoutSeconds }}
{{- end }}
{{- if eq .Values.storage.type "local" }}
{{- $_ := set $data "IMAGE_SERVICE_LOCAL_STORAGE_DIR" .Values.storage.local.dir }}
{{- with .Values.storage.local.publicBaseUrl }}
{{- $_ := set $data "IMAGE_SERVICE_LOCAL_PUBLIC_BASE_URL" . }}
{{- end }}
{{- else }}
{{- $r2 := .Values.storage.r2 }}
{{- $_ := set $data "IMAGE_SERVICE_R2_ENDPOINT_URL" $r2.endpointUrl }}
{{- $_ := set $data "IMAGE_SERVICE_R2_BUCKET" $r2.bucket }}
{{- $_ := set $data "IMAGE_SERVICE_R2_PUBLIC_BASE_URL" $r2.publicBaseUrl }}
{{- $_ := set $data "IMAGE_SERVICE_R2_PRESIGN_TTL_S" $r2.presignTtlSeconds }}
{{- with $r2.recordsBucket }}
{{- $_ := set $data "IMAGE_SERVICE_R2_RECORDS_BUCKET" . }}
{{- end }}
{{- end }}
{{- with .Values.tracing.otlpEndpoint }}
{{- $_ := set $data "OTEL_EXPORTER_OTLP_ENDPOINT" . }}
{{- $_ := set $data "OTEL_TRACES_SAMPLER" "parentbased_traceidratio" }}
{{- $_ := set $data "OTEL_TRACES_SAMPLER_ARG" $.Values.tracing.sampleRatio }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{- $_ := set $data (printf "IMAGE_SERVICE_%s" $key) $value }}
{{- end }}
{{- range $key := keys $data | sortAlpha }}
{{- $value := get $data $key }}
{{- /* toJson, not toString: Helm holds numbers as float64, which toString prints as 6.7108864e+07 */}}
{{ $key }}: {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ toJson $value | quote }}{{ end }}
{{- end }}
{{- end }}

{{/*
Pod termination grace: long enough for the preStop sleep, then the longer
of the two drains (the server's, and the REST sidecar's when it runs), then
a margin for the processes to exit. Kubernetes counts the preStop hook
inside this period, so a shorter one would SIGKILL in-flight requests.
*/}}
{{- define "image-service.terminationGracePeriodSeconds" -}}
{{- $longest := int .Values.server.shutdownGraceSeconds }}
{{- if .Values.rest.enabled }}
{{- $longest = max $longest (int .Values.rest.shutdownGraceSeconds) }}
{{- end }}
{{- $drain := add (int .Values.preStopSleepSeconds) $longest }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain 15 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than preStopSleepSeconds + the longer of server.shutdownGraceSeconds and rest.shutdownGraceSeconds (%d), or in-flight requests are killed mid-drain" (int .Values.terminationGracePeriodSeconds) $drain) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Checks that the schema cannot express because they span sections.
*/}}
{{- define "image-service.validate" -}}
{{- if and .Values.ingress.enabled (not .Values.rest.enabled) }}
{{- fail "ingress.enabled needs rest.enabled: the Ingress routes to the REST sidecar" }}
{{- end }}
{{- if ge (int64 .Values.rest.maxUploadBytes) (int64 .Values.server.maxMessageBytes) }}
{{- fail (printf "rest.maxUploadBytes (%d) must be smaller than server.maxMessageBytes (%d): an edit upload travels in one gRPC message" (int64 .Values.rest.maxUploadBytes) (int64 .Values.server.maxMessageBytes)) }}
{{- end }}
{{- if and .Values.metrics.enabled (has (int .Values.metrics.port) (list (int .Values.server.port) (int .Values.rest.port))) }}
{{- fail "metrics.port must differ from server.port and rest.port: the containers share the pod's network namespace" }}
{{- end }}
{{- $replicas := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- if and (eq .Values.auth.mode "keys") $replicas (not .Values.auth.redis.existingSecret) }}
{{- fail "more than one replica with auth.mode keys needs auth.redis.existingSecret: each pod's embedded key store would hold different keys and counters" }}
{{- end }}
{{- if and .Values.rest.enabled (eq (int .Values.rest.port) (int .Values.server.port)) }}
{{- fail "rest.port and server.port must differ: both containers share the pod's network namespace" }}
{{- end }}
{{- end }}
