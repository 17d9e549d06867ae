{{/*
Alertmanager helpers: names, the credentials' Secret and the non-secret settings, which
`cdb alerting render` (the init container) reads as the environment.
*/}}

{{/* Name of Alertmanager's objects. */}}
{{- define "cdb.alertmanager.name" -}}
{{- printf "%s-alertmanager" (include "cdb.fullname" .) }}
{{- end }}

{{/* The Secret holding the receivers' credentials. */}}
{{- define "cdb.alertmanager.secretName" -}}
{{- default (include "cdb.alertmanager.name" .) .Values.alertmanager.existingSecret }}
{{- end }}

{{/* Component labels. */}}
{{- define "cdb.alertmanager.selectorLabels" -}}
{{ include "cdb.selectorLabels" . }}
app.kubernetes.io/component: alertmanager
{{- end }}

{{/* Non-secret settings of `cdb alerting render` (the ConfigMap's data). */}}
{{- define "cdb.alertmanager.settings" -}}
{{- $am := .Values.alertmanager }}
{{- $r := $am.receivers }}
ALERT_SYSTEM: {{ include "cdb.fullname" . | quote }}
ALERT_NAMESPACE: {{ .Release.Namespace | quote }}
{{- with $am.grafanaUrl }}
GRAFANA_URL: {{ . | quote }}
{{- end }}
ALERT_CRITICAL_GROUP_WAIT: {{ $am.routing.criticalGroupWait | quote }}
ALERT_CRITICAL_GROUP_INTERVAL: {{ $am.routing.criticalGroupInterval | quote }}
ALERT_CRITICAL_REPEAT: {{ $am.routing.criticalRepeat | quote }}
ALERT_WARNING_GROUP_WAIT: {{ $am.routing.warningGroupWait | quote }}
ALERT_WARNING_GROUP_INTERVAL: {{ $am.routing.warningGroupInterval | quote }}
ALERT_WARNING_REPEAT: {{ $am.routing.warningRepeat | quote }}
SLACK_CHANNEL: {{ $r.slack.channel | quote }}
{{- if $r.telegram.chatId }}
TELEGRAM_CHAT_ID: {{ $r.telegram.chatId | int64 | toString | quote }}
{{- end }}
TELEGRAM_API_URL: {{ $r.telegram.apiUrl | quote }}
SMTP_SMARTHOST: {{ $r.email.smarthost | quote }}
SMTP_FROM: {{ $r.email.from | quote }}
SMTP_TO: {{ $r.email.to | quote }}
SMTP_USERNAME: {{ $r.email.username | quote }}
SMTP_REQUIRE_TLS: {{ $r.email.requireTls | toString | quote }}
{{- end }}

{{/* The notification template (backoffice/alertmanager/cdb.tmpl) filled in for this release. */}}
{{- define "cdb.alertmanager.template" -}}
{{- $grafana := default "http://127.0.0.1:3000" .Values.alertmanager.grafanaUrl | trimSuffix "/" }}
{{- .Files.Get "files/alertmanager/cdb.tmpl" | replace "__SYSTEM__" (include "cdb.fullname" .) | replace "__NAMESPACE__" .Release.Namespace | replace "__GRAFANA_URL__" $grafana }}
{{- end }}
