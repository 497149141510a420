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
app.kubernetes.io/name: {{ include "preview-bot.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
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

{{/*
The settings the AppProject is built from, with the bot's defaults filled in. They are also
written into the settings file, so the bot and its fence cannot disagree. A test keeps these
defaults equal to bot/config.py's.
*/}}
{{- define "preview-bot.fence" -}}
argocd_project: {{ .Values.settings.argocd_project | default "previews" | quote }}
namespace_template: {{ .Values.settings.namespace_template | default "dex-pr-{number}" | quote }}
destination_server: {{ .Values.settings.destination_server | default "https://kubernetes.default.svc" | quote }}
github_api_url: {{ .Values.settings.github_api_url | default "https://api.github.com" | quote }}
{{- end }}

{{/* Where the bot's Applications live: Argo CD's namespace, or the "any namespace" one. */}}
{{- define "preview-bot.applicationNamespace" -}}
{{- default .Values.argocd.namespace .Values.argocd.applicationNamespace }}
{{- end }}

{{/* settings.repositories as a YAML list of trimmed entries (the bot's LIST parsing). */}}
{{- define "preview-bot.repositories" -}}
{{- $message := "settings.repositories is required: the repositories that may get previews, as owner/name or owner/* (a list, or one comma-separated string), e.g. --set settings.repositories=data-literate/DEX" }}
{{- $raw := required $message .Values.settings.repositories }}
{{- $items := kindIs "string" $raw | ternary (splitList "," (toString $raw)) $raw }}
{{- $repos := list }}
{{- range $items }}
{{- $item := trim (toString .) }}
{{- if $item }}
{{- $repos = append $repos $item }}
{{- end }}
{{- end }}
{{- if not $repos }}
{{- fail $message }}
{{- end }}
{{- toYaml $repos }}
{{- end }}

{{/* GitHub's web root, as bot/__main__.py's web_url derives it from the API root. */}}
{{- define "preview-bot.githubUrl" -}}
{{- if .Values.project.githubUrl }}
{{- trimSuffix "/" .Values.project.githubUrl }}
{{- else }}
{{- $api := urlParse (fromYaml (include "preview-bot.fence" .)).github_api_url }}
{{- if eq $api.host "api.github.com" }}
{{- "https://github.com" }}
{{- else }}
{{- printf "%s://%s" $api.scheme $api.host }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The AppProject's sourceRepos. owner/name and owner/* map one to one onto Argo CD's globs,
whose `*` stops at `/` as a repository's owner/name has one. `*` alone means "wherever the App
is installed", which GitHub knows and the chart does not: there, and for other glob characters
(Argo CD lower-cases URLs and reads `?`, `[`, `{` its own way), project.sourceRepos is needed.
*/}}
{{- define "preview-bot.sourceRepos" -}}
{{- if .Values.project.sourceRepos }}
{{- toYaml .Values.project.sourceRepos }}
{{- else }}
{{- $base := include "preview-bot.githubUrl" . }}
{{- $urls := list }}
{{- range $repo := include "preview-bot.repositories" . | fromYamlArray }}
{{- if eq $repo "*" }}
{{- fail "settings.repositories is *, every repository the App is installed on: the AppProject cannot list those. Set project.sourceRepos to their URLs (e.g. https://github.com/data-literate/*), or name the repositories in settings.repositories" }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9._*-]+/[A-Za-z0-9._*-]+$" $repo) }}
{{- fail (printf "settings.repositories entry %q is not owner/name (with * as the only glob): the AppProject cannot mirror it. Write owner/name or owner/*, or set project.sourceRepos" $repo) }}
{{- end }}
{{- $urls = append $urls (printf "%s/%s" $base $repo) }}
{{- end }}
{{- toYaml $urls }}
{{- end }}
{{- end }}

{{/* The preview namespaces as a glob: every {placeholder} of namespace_template becomes *. */}}
{{- define "preview-bot.namespaceGlob" -}}
{{- regexReplaceAll "\\{[^}]*\\}" (fromYaml (include "preview-bot.fence" .)).namespace_template "*" }}
{{- end }}

{{/*
The settings file: .Values.settings, plus what the chart decides (the Applications' namespace
its Role is made for, and the settings its AppProject is built from).
*/}}
{{- define "preview-bot.settingsFile" -}}
{{- $fence := fromYaml (include "preview-bot.fence" .) }}
{{- $_ := include "preview-bot.repositories" . }}
{{- $chart := dict "argocd_namespace" (include "preview-bot.applicationNamespace" .) }}
{{- $_ = set $chart "argocd_project" $fence.argocd_project }}
{{- $_ = set $chart "namespace_template" $fence.namespace_template }}
{{- $_ = set $chart "destination_server" $fence.destination_server }}
{{- toYaml (merge $chart (deepCopy .Values.settings)) }}
{{- end }}

{{/*
Environment variables the chart sets or builds other objects from: through extraEnv they would
override the settings file behind the chart's back (the AppProject or the Role would then fence
something else than what the bot does), so they are refused there.
*/}}
{{- define "preview-bot.managedEnv" -}}
- PREVIEW_BOT_CONFIG
- PREVIEW_BOT_REPOSITORIES
- PREVIEW_BOT_ARGOCD_PROJECT
- PREVIEW_BOT_ARGOCD_NAMESPACE
- PREVIEW_BOT_NAMESPACE_TEMPLATE
- PREVIEW_BOT_DESTINATION_SERVER
- GITHUB_API_URL
- PREVIEW_BOT_LEADER_ELECTION
- PREVIEW_BOT_LEASE_NAME
- PREVIEW_BOT_LEASE_NAMESPACE
- PREVIEW_BOT_LEASE_SECONDS
- PREVIEW_BOT_SHUTDOWN_GRACE_SECONDS
- POD_NAME
- POD_NAMESPACE
{{- end }}

{{- define "preview-bot.checkExtraEnv" -}}
{{- $managed := include "preview-bot.managedEnv" . | fromYamlArray }}
{{- range .Values.extraEnv }}
{{- if has .name $managed }}
{{- fail (printf "extraEnv sets %s, which the chart manages: set its value in the chart's values instead (docs/operations.md, Settings)" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Lease's namespace: the one set, else the release's (where the pods run). */}}
{{- define "preview-bot.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/*
Combinations that cannot work, refused before anything is installed. Several pods without
leader election would each sync, resync and comment on their own; with it only the leader is
ready, so a PodDisruptionBudget could never let the leader's node drain.
*/}}
{{- define "preview-bot.checkReplicas" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount %d needs leaderElection.enabled=true: without it every pod would sync, resync and comment on its own" (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.leaderElection.enabled .Values.podDisruptionBudget.enabled }}
{{- fail "podDisruptionBudget.enabled with leaderElection.enabled: only the leader is ready, so the budget would never let its node drain. Turn the budget off; a follower takes over within leaderElection.leaseSeconds (at once after a clean stop)" }}
{{- end }}
{{- end }}

{{/*
How long the kubelet waits for a stopping pod, preStop included: the preStop sleep (endpoints
drop the pod), then the bot's own grace for running syncs after SIGTERM, then a margin to
cancel, release the Lease and exit. Anything shorter kills the bot mid-shutdown.
*/}}
{{- define "preview-bot.terminationGracePeriod" -}}
{{- $s := .Values.shutdown }}
{{- $needed := add (int $s.preStopSeconds) (int (ceil $s.graceSeconds)) (int $s.marginSeconds) }}
{{- $given := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $given }}
{{- $needed }}
{{- else if lt (int $given) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds %d is below shutdown.preStopSeconds + shutdown.graceSeconds + shutdown.marginSeconds = %d: the kubelet would kill the bot mid-shutdown. Leave it empty (computed) or raise it" (int $given) (int $needed)) }}
{{- else }}
{{- int $given }}
{{- end }}
{{- end }}
