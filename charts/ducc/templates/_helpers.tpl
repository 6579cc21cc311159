{{- define "ducc.fullname" -}}{{ .Release.Name }}-ducc{{- end -}}

{{- define "ducc.labels" -}}
app.kubernetes.io/name: ducc
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "ducc.selector" -}}
app.kubernetes.io/name: ducc
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ducc.secretName" -}}
{{ .Values.secrets.existingSecret | default (printf "%s-secrets" (include "ducc.fullname" .)) }}
{{- end -}}

{{- define "ducc.redisUrl" -}}
{{- if .Values.redis.enabled -}}redis://{{ include "ducc.fullname" . }}-redis:6379/0{{- else -}}{{ required "redis.url is required when redis.enabled is false" .Values.redis.url }}{{- end -}}
{{- end -}}

{{/* Environment shared by every component: settings, Redis, secrets as files. */}}
{{- define "ducc.env" -}}
- name: DUCC_REDIS_URL
  value: {{ include "ducc.redisUrl" . | quote }}
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

{{- define "ducc.volumeMounts" -}}
- name: secrets
  mountPath: /run/secrets/ducc
  readOnly: true
- name: wishlist
  mountPath: /etc/ducc
  readOnly: true
- name: state
  mountPath: /state
{{- end -}}

{{- define "ducc.volumes" -}}
- name: secrets
  secret:
    secretName: {{ include "ducc.secretName" . }}
    defaultMode: 0400
- name: wishlist
  configMap:
    name: {{ include "ducc.fullname" . }}-wishlist
- name: state
  emptyDir: {}
- name: repository
  persistentVolumeClaim:
    claimName: {{ .Values.repository.existingClaim | default (printf "%s-repository" (include "ducc.fullname" .)) }}
{{- end -}}
