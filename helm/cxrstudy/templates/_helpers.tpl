{{/* Names */}}
{{- define "cxrstudy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cxrstudy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "cxrstudy.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "cxrstudy.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "cxrstudy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}{{ default (include "cxrstudy.fullname" .) .Values.serviceAccount.name }}{{ else }}{{ default "default" .Values.serviceAccount.name }}{{ end }}
{{- end }}

{{/* Labels: every pod of the release carries name + instance; component tells the role. */}}
{{- define "cxrstudy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cxrstudy.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "cxrstudy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "cxrstudy.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "cxrstudy.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Redis */}}
{{- define "cxrstudy.redisHost" -}}
{{- if .Values.redis.enabled }}{{ include "cxrstudy.fullname" . }}-redis{{ else }}{{ required "externalRedis.host is required when redis.enabled is false" .Values.externalRedis.host }}{{ end }}
{{- end }}

{{- define "cxrstudy.redisPort" -}}
{{- if .Values.redis.enabled }}6379{{ else }}{{ .Values.externalRedis.port }}{{ end }}
{{- end }}

{{- define "cxrstudy.redisSecret" -}}
{{- if .Values.redis.enabled }}{{ default (printf "%s-redis" (include "cxrstudy.fullname" .)) .Values.redis.auth.existingSecret }}{{ else }}{{ .Values.externalRedis.existingSecret }}{{ end }}
{{- end }}

{{- define "cxrstudy.redisPasswordKey" -}}
{{- if .Values.redis.enabled }}{{ .Values.redis.auth.passwordKey }}{{ else }}{{ .Values.externalRedis.passwordKey }}{{ end }}
{{- end }}

{{- define "cxrstudy.redisHasPassword" -}}
{{- if or .Values.redis.enabled .Values.externalRedis.existingSecret }}true{{ end }}
{{- end }}

{{/* The broker URL, with the password from the Secret through Kubernetes' $(VAR) expansion: the
     password never appears in the manifests. */}}
{{- define "cxrstudy.brokerEnv" -}}
{{- if include "cxrstudy.redisHasPassword" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "cxrstudy.redisSecret" . }}
      key: {{ include "cxrstudy.redisPasswordKey" . }}
{{- end }}
- name: CXRSTUDY_BROKER_URL
  value: {{ printf "%s://%s%s:%s/%v" (ternary "rediss" "redis" (and (not .Values.redis.enabled) .Values.externalRedis.tls)) (ternary ":$(REDIS_PASSWORD)@" "" (eq (include "cxrstudy.redisHasPassword" .) "true")) (include "cxrstudy.redisHost" .) (include "cxrstudy.redisPort" .) (ternary 0 .Values.externalRedis.db .Values.redis.enabled) | quote }}
{{- end }}

{{/* Store, S3 credentials (Secret keys only) and the worker settings. */}}
{{- define "cxrstudy.env" -}}
{{ include "cxrstudy.brokerEnv" . }}
- name: CXRSTUDY_IMAGE
  value: {{ include "cxrstudy.image" . | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: CXRSTUDY_STORE
  value: {{ .Values.store.uri | quote }}
- name: AWS_REGION
  value: {{ .Values.store.region | quote }}
{{- if .Values.store.endpoint }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ .Values.store.endpoint | quote }}
{{- end }}
{{- if .Values.store.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.existingSecret }}
      key: {{ .Values.store.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.existingSecret }}
      key: {{ .Values.store.secretAccessKeyKey }}
{{- end }}
{{- if .Values.tracking.mlflowUri }}
- name: MLFLOW_TRACKING_URI
  value: {{ .Values.tracking.mlflowUri | quote }}
{{- end }}
{{- if .Values.tracking.experiment }}
- name: MLFLOW_EXPERIMENT_NAME
  value: {{ .Values.tracking.experiment | quote }}
{{- end }}
- name: CXRSTUDY_VISIBILITY_TIMEOUT
  value: {{ .Values.worker.visibilityTimeout | quote }}
- name: CXRSTUDY_RESTORE_INTERVAL
  value: {{ .Values.worker.restoreInterval | quote }}
- name: CXRSTUDY_LEASE_TTL
  value: {{ .Values.worker.leaseTtl | quote }}
- name: CXRSTUDY_MAX_ATTEMPTS
  value: {{ .Values.worker.maxAttempts | quote }}
- name: CXRSTUDY_SIGTERM_GRACE
  value: {{ .Values.worker.sigtermGrace | quote }}
- name: CXRSTUDY_PROGRESS_INTERVAL
  value: {{ .Values.worker.progressInterval | quote }}
- name: HOME
  value: /tmp/home
- name: XDG_CACHE_HOME
  value: /cache
- name: TORCH_HOME
  value: /cache/torch
- name: HF_HOME
  value: /cache/huggingface
{{- end }}

{{/* Writable places on a read-only root filesystem. */}}
{{- define "cxrstudy.writableMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /cache
{{- end }}

{{- define "cxrstudy.writableVolumes" -}}
- name: tmp
  emptyDir: {}
- name: cache
  emptyDir: {}
{{- end }}
