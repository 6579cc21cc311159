{{/* The chart's name, and the prefix of every object's name (helm create's logic: a release
called "ducc" gives "ducc-web", a release "prod" gives "prod-ducc-web"). */}}
{{- define "ducc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ducc.fullname" -}}
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

{{/* The name of one component's objects: (dict "root" . "component" "web") → <fullname>-web. */}}
{{- define "ducc.componentName" -}}
{{- printf "%s-%s" (include "ducc.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ducc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "ducc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ducc.selector" -}}
app.kubernetes.io/name: {{ include "ducc.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ducc.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ducc.secretName" -}}
{{ .Values.secrets.existingSecret | default (printf "%s-secrets" (include "ducc.fullname" .)) }}
{{- end -}}

{{/* The bundled Redis's password: the value given, else the one already in the release's Secret (so an
upgrade keeps it), else a new random one. Alphanumeric, so it is safe in a URL and in redis.conf. */}}
{{- define "ducc.redisPassword" -}}
{{- if .Values.secrets.redisPassword -}}
{{- .Values.secrets.redisPassword -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "ducc.secretName" .) -}}
{{- if and $existing (index ($existing.data | default dict) "redis-password") -}}
{{- index $existing.data "redis-password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every ducc component: settings, Redis, secrets as files. */}}
{{- define "ducc.env" -}}
{{- if .Values.redis.enabled -}}
- name: DUCC_REDIS_URL
  value: "redis://{{ include "ducc.componentName" (dict "root" . "component" "redis") }}:{{ .Values.redis.port }}/0"
{{- else -}}
- name: DUCC_REDIS_URL
  value: {{ required "redis.url is required when redis.enabled is false" .Values.redis.url | quote }}
{{- end }}
{{- if or .Values.redis.enabled .Values.redis.passwordFromSecret }}
# The Redis password stays a file of the Secret: ducc adds it to the connection, never to the URL,
# so it is in no pod spec, no environment, no process's arguments and no log line.
- name: DUCC_REDIS_PASSWORD_FILE
  value: /run/secrets/ducc/redis-password
{{- end }}
- name: DUCC_ROOT
  value: /repository
- name: DUCC_STATE_DIR
  value: /state
- name: DUCC_WISHLIST
  value: /etc/ducc/wishlist.yaml
- name: DUCC_PLATFORM
  value: {{ .Values.settings.platform | quote }}
- name: DUCC_SYNC_SCHEDULE
  value: {{ .Values.settings.syncSchedule | quote }}
- name: DUCC_GC_SCHEDULE
  value: {{ .Values.settings.gcSchedule | quote }}
- name: DUCC_GC_GRACE
  value: {{ .Values.settings.gcGrace | quote }}
- name: DUCC_UNPUBLISH_ON_DELETE
  value: {{ ternary "1" "0" .Values.settings.unpublishOnDelete | quote }}
- name: DUCC_UNPUBLISH_REMOVED_WISHES
  value: {{ ternary "1" "0" .Values.settings.unpublishRemovedWishes | quote }}
- name: DUCC_ALLOW
  value: {{ .Values.settings.allow | quote }}
- name: DUCC_INSECURE_REGISTRIES
  value: {{ .Values.settings.insecureRegistries | quote }}
- name: DUCC_LOG_LEVEL
  value: {{ .Values.settings.logLevel | quote }}
- name: DUCC_JOB_LEASE
  value: {{ .Values.settings.jobLease | quote }}
- name: DUCC_WEBHOOK_TOKEN_FILE
  value: /run/secrets/ducc/webhook-token
{{- if .Values.secrets.registryUser }}
- name: DUCC_REGISTRY_USER
  value: {{ .Values.secrets.registryUser | quote }}
- name: DUCC_REGISTRY_HOSTS
  value: {{ .Values.secrets.registryHosts | quote }}
- name: DUCC_REGISTRY_PASSWORD_FILE
  value: /run/secrets/ducc/registry-password
{{- end }}
{{- end -}}

{{/* The pod spec lines every ducc component shares: service account token, user, pull secrets. */}}
{{- define "ducc.podSpec" -}}
automountServiceAccountToken: false
securityContext: {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "ducc.volumeMounts" -}}
- name: secrets
  mountPath: /run/secrets/ducc
  readOnly: true
- name: wishlist
  mountPath: /etc/ducc
  readOnly: true
- name: state
  mountPath: /state
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Volumes of every ducc component; the repository only where it is mounted. */}}
{{- define "ducc.volumes" -}}
- name: secrets
  secret:
    secretName: {{ include "ducc.secretName" . }}
    # Group-readable: the files belong to the pod's fsGroup, the group ducc runs as.
    defaultMode: 0440
- name: wishlist
  configMap:
    name: {{ include "ducc.componentName" (dict "root" . "component" "wishlist") }}
- name: state
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "ducc.repositoryVolume" -}}
- name: repository
  persistentVolumeClaim:
    claimName: {{ .Values.repository.existingClaim | default (include "ducc.componentName" (dict "root" . "component" "repository")) }}
{{- end -}}
