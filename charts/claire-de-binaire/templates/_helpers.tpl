{{/*
Names, labels, images and the hardened security contexts shared by every template.
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "cdb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name; also the TradingSystem's name and the prefix of every object.
Kept at 40 characters at most so that "<fullname>-rest-screener-params" stays a valid name.
*/}}
{{- define "cdb.fullname" -}}
{{- $name := "" }}
{{- if .Values.fullnameOverride }}
{{- $name = .Values.fullnameOverride }}
{{- else }}
{{- $base := default .Chart.Name .Values.nameOverride }}
{{- if contains $base .Release.Name }}
{{- $name = .Release.Name }}
{{- else }}
{{- $name = printf "%s-%s" .Release.Name $base }}
{{- end }}
{{- end }}
{{- if gt (len $name) 40 }}
{{- fail (printf "the full name %q is longer than 40 characters: set fullnameOverride" $name) }}
{{- end }}
{{- $name | trimSuffix "-" }}
{{- end }}

{{/* chart-version label value. */}}
{{- define "cdb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: name and instance only. */}}
{{- define "cdb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "cdb.labels" -}}
helm.sh/chart: {{ include "cdb.chart" . }}
{{ include "cdb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: claire-de-binaire
{{- end }}

{{/* The application image; a `latest` tag is refused. */}}
{{- define "cdb.image" -}}
{{- $tag := toString (default .Chart.AppVersion .Values.image.tag) }}
{{- if eq $tag "latest" }}
{{- fail "image.tag must name a version, not latest" }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Another image from {repository, tag}; a `latest` tag is refused. Args: dict image. */}}
{{- define "cdb.otherImage" -}}
{{- if eq (toString .tag) "latest" }}
{{- fail (printf "%s: the tag must name a version, not latest" .repository) }}
{{- end }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}

{{/* The Secret holding tokens, passwords and URLs. */}}
{{- define "cdb.secretName" -}}
{{- default (include "cdb.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* Pod security context. Args: dict "user" "group" "fsGroup". */}}
{{- define "cdb.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .user }}
runAsGroup: {{ .group }}
fsGroup: {{ .fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context (the same for every container). */}}
{{- define "cdb.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The app pod security context from values.podSecurityContext. */}}
{{- define "cdb.appPodSecurityContext" -}}
{{- include "cdb.podSecurityContext" (dict "user" .Values.podSecurityContext.runAsUser "group" .Values.podSecurityContext.runAsGroup "fsGroup" .Values.podSecurityContext.fsGroup) }}
{{- end }}

{{/* Environment every app container gets: Python in a read-only root filesystem. */}}
{{- define "cdb.pythonEnv" -}}
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end }}

{{/* Redis and PostgreSQL connection of the services (in-cluster or external). */}}
{{- define "cdb.datastoreEnv" -}}
{{- $secret := include "cdb.secretName" . }}
{{- if .Values.redis.enabled }}
- name: REDIS_URL
  value: {{ printf "redis://%s-redis:6379/0" (include "cdb.fullname" .) | quote }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: REDIS_PASSWORD}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: REDIS_URL}
{{- end }}
{{- if .Values.postgresql.enabled }}
- name: POSTGRES_USER
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: POSTGRES_USER}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: POSTGRES_PASSWORD}
- name: DATABASE_URL
  value: {{ printf "postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@%s-postgresql:5432/%s" (include "cdb.fullname" .) .Values.postgresql.database | quote }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: DATABASE_URL}
{{- end }}
{{- end }}

{{/* A map of NAME: value as an env list (sorted by name). */}}
{{- define "cdb.envMap" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}

{{/* A Secret value: the given one, else the existing Secret's, else a random one (base64). */}}
{{- define "cdb.secretValue" -}}
{{- if .value }}
{{- .value | b64enc }}
{{- else if hasKey .existing .key }}
{{- index .existing .key }}
{{- else }}
{{- randAlphaNum (int .length) | b64enc }}
{{- end }}
{{- end }}
