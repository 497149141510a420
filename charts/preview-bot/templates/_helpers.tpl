{{/* Names and labels shared by every template. */}}

{{- define "preview-bot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-preview-bot, or RELEASE when it already contains the chart name; 63 chars max. */}}
{{- define "preview-bot.fullname" -}}
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

{{- define "preview-bot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "preview-bot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "preview-bot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "preview-bot.labels" -}}
helm.sh/chart: {{ include "preview-bot.chart" . }}
{{ include "preview-bot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "preview-bot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "preview-bot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "preview-bot.secretName" -}}
{{- default (include "preview-bot.fullname" .) .Values.github.existingSecret }}
{{- end }}

{{- define "preview-bot.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The settings file: .Values.settings plus the Argo CD namespace the Role is made for. */}}
{{- define "preview-bot.settingsFile" -}}
{{- $settings := merge (dict "argocd_namespace" .Values.argocd.namespace) (deepCopy .Values.settings) }}
{{- toYaml $settings }}
{{- end }}
