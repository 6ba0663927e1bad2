{{/* Chart name. */}}
{{- define "mailproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "mailproxy.fullname" -}}
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

{{- define "mailproxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mailproxy.labels" -}}
helm.sh/chart: {{ include "mailproxy.chart" . }}
{{ include "mailproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mailproxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailproxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mailproxy.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/* Names of the Secrets, created here or existing. */}}
{{- define "mailproxy.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "mailproxy.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{- define "mailproxy.gatewayKeyEnabled" -}}
{{- if or .Values.gateway.key.existingSecret .Values.gateway.key.value }}true{{ end }}
{{- end }}

{{- define "mailproxy.postgresqlEnabled" -}}
{{- if .Values.gateway.postgresql.existingSecret }}true{{ end }}
{{- end }}

{{- define "mailproxy.gatewayKeySecretName" -}}
{{- default (printf "%s-gateway-key" (include "mailproxy.fullname" .)) .Values.gateway.key.existingSecret }}
{{- end }}

{{/* Checks that make some value combinations fail to render, with a message saying why. */}}
{{- define "mailproxy.validate" -}}
{{- if and .Values.autoscaling.enabled .Values.gateway.persistence.enabled }}
{{- fail "autoscaling.enabled cannot be combined with gateway.persistence.enabled: the local SQLite gateway store has a single writer, so the StatefulSet runs exactly one replica. Use a PostgreSQL store (config.gateway.store: postgresql://...) without persistence to scale out." }}
{{- end }}
{{- if and .Values.gateway.persistence.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "gateway.persistence.enabled needs replicaCount: 1 (the SQLite gateway store has a single writer)" }}
{{- end }}
{{- if and (include "mailproxy.postgresqlEnabled" .) .Values.gateway.persistence.enabled }}
{{- fail "gateway.postgresql.existingSecret and gateway.persistence.enabled exclude each other: the store is in PostgreSQL, there is nothing to keep on a volume" }}
{{- end }}
{{- if hasKey .Values.config "shutdown_timeout" }}
{{- fail "set shutdownTimeoutSeconds instead of config.shutdown_timeout: the chart derives the pod's terminationGracePeriodSeconds from it" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (or .Values.tls.crt .Values.tls.key) (not (and .Values.tls.crt .Values.tls.key)) }}
{{- fail "tls.crt and tls.key go together: give both, or neither (the chart then generates a self-signed certificate), or tls.existingSecret" }}
{{- end }}
{{- if and (not .Values.config) (not .Values.tls.enabled) }}
{{- fail "the default config (config: empty) serves TLS from tls.mountPath: keep tls.enabled: true, or give your own config" }}
{{- end }}
{{- if hasKey (include "mailproxy.userConfig" . | fromYaml) "Error" }}
{{- fail "config: could not be read as YAML" }}
{{- end }}
{{- if .Values.config }}
{{- $missing := list }}
{{- range (list "listeners" "upstreams" "routes") }}
{{- if not (hasKey $.Values.config .) }}{{ $missing = append $missing . }}{{ end }}
{{- end }}
{{- if $missing }}
{{- fail (printf "config: %s missing; config is the whole mailproxy config file (listeners, upstreams, routes...), not merged with the chart's default: copy files/default-config.yaml and edit it" (join ", " $missing)) }}
{{- end }}
{{- end }}
{{- $config := include "mailproxy.userConfig" . | fromYaml }}
{{- $listeners := dict }}
{{- range $config.listeners }}{{ $_ := set $listeners (toString .name) (regexFind "[0-9]+$" (toString .address)) }}{{ end }}
{{- range .Values.service.ports }}
{{- $target := toString (.targetPort | default .name) }}
{{- if and (not (hasKey $listeners $target)) (not (has $target (values $listeners))) }}
{{- fail (printf "service.ports %s: targetPort %s is not a listener of the config (listeners: %s)" (toString .name) $target (join ", " (keys $listeners | sortAlpha))) }}
{{- end }}
{{- end }}
{{- $gateway := false }}
{{- range $config.listeners }}{{ if eq (toString .mode) "gateway" }}{{ $gateway = true }}{{ end }}{{ end }}
{{- $store := toString (dig "gateway" "store" "" $config) }}
{{- $shared := or (hasPrefix "postgresql://" $store) (hasPrefix "postgres://" $store) (include "mailproxy.postgresqlEnabled" .) }}
{{- if and $gateway (not $shared) (not .Values.gateway.persistence.enabled) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "a gateway with an SQLite store and several replicas would give each pod its own store (mail seen differently per connection, fetched once per pod): set replicaCount: 1 with gateway.persistence.enabled, or use a PostgreSQL store (config.gateway.store: postgresql://...)" }}
{{- end }}
{{- range (include "mailproxy.userConfig" . | fromYaml).listeners }}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$" (toString .name)) }}
{{- fail (printf "listener name %q is not a valid Kubernetes port name (at most 15 characters: lowercase letters, digits, '-')" (toString .name)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The metrics port: from config.metrics.address when given, else .Values.metrics.port. */}}
{{- define "mailproxy.metricsPort" -}}
{{- $config := include "mailproxy.userConfig" . | fromYaml }}
{{- if and $config.metrics $config.metrics.address }}
{{- regexFind "[0-9]+$" (toString $config.metrics.address) }}
{{- else }}
{{- .Values.metrics.port }}
{{- end }}
{{- end }}

{{/* The config as given: .Values.config, or the chart's default file when that is empty. */}}
{{- define "mailproxy.userConfig" -}}
{{- if .Values.config }}
{{- toYaml .Values.config }}
{{- else }}
{{- .Files.Get "files/default-config.yaml" }}
{{- end }}
{{- end }}

{{/* The mailproxy config file: the user's config plus what the chart owns. */}}
{{- define "mailproxy.config" -}}
{{- $config := include "mailproxy.userConfig" . | fromYaml }}
{{- $_ := set $config "shutdown_timeout" (printf "%ds" (int .Values.shutdownTimeoutSeconds)) }}
{{- if not $config.metrics }}
{{- $_ := set $config "metrics" (dict "address" (printf "0.0.0.0:%d" (int .Values.metrics.port))) }}
{{- end }}
{{- if include "mailproxy.postgresqlEnabled" . }}
{{- $pg := .Values.gateway.postgresql }}
{{- $gw := $config.gateway | default dict }}
{{- $_ := set $gw "store" (dict "file" (printf "%s/%s" $pg.mountPath $pg.urlKey)) }}
{{- if $pg.passwordKey }}
{{- $_ := set $gw "store_password" (dict "file" (printf "%s/%s" $pg.mountPath $pg.passwordKey)) }}
{{- end }}
{{- $_ := set $config "gateway" $gw }}
{{- end }}
{{- if and $config.gateway (include "mailproxy.gatewayKeyEnabled" .) (not (hasKey $config.gateway "key_file")) }}
{{- $_ := set $config.gateway "key_file" (printf "%s/%s" .Values.gateway.key.mountPath .Values.gateway.key.secretKey) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Rendered Secrets, hashed into the checksum/secret pod annotation. */}}
{{- define "mailproxy.secretData" -}}
tls: {{ .Values.tls.enabled }} {{ include "mailproxy.tlsSecretName" . }} {{ .Values.tls.crt }} {{ .Values.tls.key }}
{{- range .Values.tls.extraSecrets }} {{ .secretName }}{{ end }}
gateway: {{ include "mailproxy.gatewayKeySecretName" . }} {{ .Values.gateway.key.value }}
postgresql: {{ .Values.gateway.postgresql.existingSecret }}
{{- end }}

{{- define "mailproxy.graceSeconds" -}}
{{- add (int .Values.shutdownTimeoutSeconds) (int .Values.terminationGraceExtraSeconds) }}
{{- end }}

{{- define "mailproxy.usesStatefulSet" -}}
{{- if .Values.gateway.persistence.enabled }}true{{ end }}
{{- end }}
