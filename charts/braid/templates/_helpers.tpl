{{/* Chart name. */}}
{{- define "braid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-braid, or the release name when it already contains the chart name. */}}
{{- define "braid.fullname" -}}
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

{{/* Selector labels (stable across upgrades). */}}
{{- define "braid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "braid.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "braid.labels" -}}
{{ include "braid.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: braid
{{- if .Values.helmLabels }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- end }}

{{/* The ServiceAccount name. */}}
{{- define "braid.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "braid.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Whether the store is external (shared by replicas). */}}
{{- define "braid.externalStore" -}}
{{- if or .Values.store.existingSecret .Values.store.dsn }}true{{- end }}
{{- end }}

{{/* The Secret holding the DSN. */}}
{{- define "braid.storeSecret" -}}
{{- default (printf "%s-store" (include "braid.fullname" .)) .Values.store.existingSecret }}
{{- end }}

{{/* Whether the listeners serve TLS. */}}
{{- define "braid.tls" -}}
{{- if or .Values.tls.existingSecret .Values.tls.certManager.issuerRef }}true{{- end }}
{{- end }}

{{/* The Secret holding the listeners' certificate (`tls.crt`, `tls.key`). */}}
{{- define "braid.tlsSecret" -}}
{{- default (printf "%s-tls" (include "braid.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/* The client CA file inside the container. */}}
{{- define "braid.clientCAFile" -}}
{{- if .Values.tls.clientCA.existingSecret }}/etc/braid/client-ca/{{ .Values.tls.clientCA.key }}
{{- else }}/etc/braid/tls/{{ .Values.tls.clientCA.key }}
{{- end }}
{{- end }}

{{/* A probe of `path`: HTTP, HTTPS with TLS, a TCP check with mutual TLS. Call with (dict "root" . "path" ...). */}}
{{- define "braid.probe" -}}
{{- if and (include "braid.tls" .root) .root.Values.tls.clientCA.enabled }}
tcpSocket:
  port: http
{{- else }}
httpGet:
  path: {{ .path }}
  port: http
  {{- if include "braid.tls" .root }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{- end }}

{{/* The Lease namespace. */}}
{{- define "braid.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/* Fails on settings that cannot work together. */}}
{{- define "braid.validate" -}}
{{- if and (not (include "braid.externalStore" .)) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) }}
{{- fail "more than one replica needs a shared store: set store.existingSecret (or store.dsn)" }}
{{- end }}
{{- if and .Values.tls.clientCA.enabled (not (include "braid.tls" .)) }}
{{- fail "tls.clientCA.enabled needs TLS: set tls.existingSecret or tls.certManager.issuerRef" }}
{{- end }}
{{- if and .Values.tls.certManager.issuerRef (not .Values.tls.existingSecret) (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.issuerRef needs a name (and a kind: Issuer or ClusterIssuer)" }}
{{- end }}
{{- with .Values.admin.basePath }}
{{- if or (not (regexMatch "^(/[A-Za-z0-9._~-]+)+$" .)) (regexMatch "^/api(/|$)" .) }}
{{- fail (printf "admin.basePath %q must start with '/', must not end with '/', may hold only letters, digits and -._~ in non-empty segments, and must not be under /api (e.g. /ops/braid)" .) }}
{{- end }}
{{- end }}
{{- end }}
