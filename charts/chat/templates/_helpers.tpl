{{/* The chart's name, or nameOverride. */}}
{{- define "chat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart's. */}}
{{- define "chat.fullname" -}}
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

{{- define "chat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "chat.labels" -}}
helm.sh/chart: {{ include "chat.chart" . }}
{{ include "chat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chat
{{- end }}

{{/* Labels selecting the operator's pods. */}}
{{- define "chat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "chat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "chat.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "chat.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Cluster-scoped objects carry the release namespace: two releases of one name in different
namespaces must not collide. */}}
{{- define "chat.clusterScopedName" -}}
{{- printf "%s-%s-operator" (include "chat.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where the optional ChatCluster (and its helm test) lives: where the operator watches. */}}
{{- define "chat.clusterNamespace" -}}
{{- default .Release.Namespace .Values.operator.watchNamespace }}
{{- end }}

{{/* Whether the PrometheusRule is rendered: metrics.prometheusRule.enabled, or when unset,
metrics.serviceMonitor.enabled. Prints "true" or nothing. */}}
{{- define "chat.prometheusRule.enabled" -}}
{{- $enabled := .Values.metrics.prometheusRule.enabled -}}
{{- if kindIs "invalid" $enabled }}{{ $enabled = .Values.metrics.serviceMonitor.enabled }}{{ end -}}
{{- if $enabled }}true{{ end -}}
{{- end }}

{{/* A PromQL label selector, braces included: (list $ "extra matchers") joined with
metrics.prometheusRule.matchers; "{}" when both are empty. */}}
{{- define "chat.alertSelector" -}}
{{- $root := index . 0 -}}
{{- printf "{%s}" (join ", " (compact (list (index . 1) $root.Values.metrics.prometheusRule.matchers))) -}}
{{- end }}

{{/* The dashboard's ConfigMap. Outside the release namespace its name carries that namespace:
releases of one name in several namespaces must not overwrite each other's in Grafana's. */}}
{{- define "chat.dashboardName" -}}
{{- $namespace := default .Release.Namespace .Values.grafanaDashboard.namespace -}}
{{- if eq $namespace .Release.Namespace -}}
{{- printf "%s-dashboard" (include "chat.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s-dashboard" (include "chat.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end }}
