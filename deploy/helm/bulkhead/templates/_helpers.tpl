{{/*
Labels on every object, and the subset that selects the pods.
Kept free of anything Helm-specific (no helm.sh/chart, no managed-by), so
deploy/kubernetes/ is exactly this chart rendered with its default values.
*/}}
{{- define "bulkhead.selectorLabels" -}}
app.kubernetes.io/name: bulkhead
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bulkhead.labels" -}}
{{ include "bulkhead.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: bulkhead
{{- end }}

{{/* The image, pinned by digest when one is given (T18). */}}
{{- define "bulkhead.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The restricted Pod Security profile, per container (T05, T17). */}}
{{- define "bulkhead.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The probe command: the admin listener on loopback, with this pod's own admin token. */}}
{{- define "bulkhead.probe" -}}
exec:
  command:
    - curl
    - --fail
    - --silent
    - --show-error
    - --max-time
    - "2"
    - --output
    - /dev/null
    - --header
    - "@/run/bulkhead/admin/authorization"
    {{- with .Values.admin.probeHost }}
    - --header
    - "Host: {{ . }}"
    {{- end }}
    - http://127.0.0.1:{{ .Values.admin.port }}{{ .path }}
{{- end }}
