{{/* Names and labels shared by every template. */}}

{{- define "prelabel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prelabel.fullname" -}}
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

{{- define "prelabel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "prelabel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "prelabel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "prelabel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: prelabel
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "prelabel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "prelabel.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "prelabel.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's permissions: exactly the API calls it makes (tests/integration/test_operator.py compares
them with the API server's audit log of a full scenario). Used by the ClusterRole or by each Role.
*/}}
{{- define "prelabel.rules" -}}
# Watch MLBackends; patch them for the finalizer and kopf's progress annotations.
- apiGroups: [prelabel.dev]
  resources: [mlbackends]
  verbs: [list, watch, patch]
- apiGroups: [prelabel.dev]
  resources: [mlbackends/status]
  verbs: [patch]
# The backend's children, applied server-side (create on first apply; the apply's answer carries
# their status, so no get). Deployments watched too: one becoming Available wakes its MLBackend.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [create, patch, list, watch]
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [create, patch, delete]
# spec.training: a run's Job (read to follow it) and its data snapshot (deleted once judged).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, patch, get]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch, delete]
# The Label Studio key (and the backend's basic auth) from the Secrets MLBackends reference.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on MLBackends (Registered, Deregistered, errors); listed to read why a backend pod is not
# ready (the scheduler's, the image puller's and the kubelet's probe messages).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
# A backend Deployment that is not available: its pods' states say why (image pull, crash, OOM kill,
# unschedulable); a training Job's pod: its termination message (the run's metrics, or why it
# failed). Listed only, never read one by one, changed, exec'd into or logged.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- if .Values.peering.enabled }}
# kopf's peering: each replica keeps its record in the peering object (made at startup if absent)
# and watches the others'; only the one of highest priority works.
- apiGroups: [kopf.dev]
  resources: [{{ if .Values.watchNamespaces }}kopfpeerings{{ else }}clusterkopfpeerings{{ end }}]
  verbs: [list, watch, patch, create]
{{- end }}
{{- end }}
