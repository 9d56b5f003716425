{{/* Common names and labels. */}}
{{- define "modelfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "modelfleet.labels" -}}
app.kubernetes.io/part-of: modelfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Empty tags mean the chart's appVersion: the tag the release publishes. */}}
{{- define "modelfleet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "modelfleet.workerImage" -}}
{{ .Values.workerImage.repository }}:{{ .Values.workerImage.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The pool-pin credential of the pre-flight replay: a Secret both the operator and the
router mount (nobody else's RBAC grants it; neither ServiceAccount may read Secrets). */}}
{{- define "modelfleet.credentialSecret" -}}
{{- .Values.canaryReplay.existingSecret | default (printf "%s-operator-credential" (include "modelfleet.fullname" .)) -}}
{{- end -}}
{{- define "modelfleet.credentialPath" -}}/var/run/secrets/modelfleet/operator-credential/token{{- end -}}
{{- define "modelfleet.credentialVolume" -}}
- name: operator-credential
  secret:
    secretName: {{ include "modelfleet.credentialSecret" . }}
    defaultMode: 0440
    items:
      - {key: {{ .Values.canaryReplay.credentialKey | quote }}, path: token}
{{- end -}}

{{/* The restricted Pod Security Standard, for every container of the chart. */}}
{{- define "modelfleet.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "modelfleet.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}
