{{/* The pod template shared by the Deployment and the StatefulSet. */}}
{{- define "mailproxy.podTemplate" -}}
metadata:
  annotations:
    checksum/config: {{ include "mailproxy.config" . | sha256sum }}
    checksum/secret: {{ include "mailproxy.secretData" . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "mailproxy.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "mailproxy.serviceAccountName" . }}
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # Above shutdown_timeout, so mailproxy finishes draining before the kubelet's SIGKILL.
  terminationGracePeriodSeconds: {{ include "mailproxy.graceSeconds" . }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  {{- with .Values.initContainers }}
  initContainers:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: mailproxy
      image: {{ include "mailproxy.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - --log-format
        - {{ .Values.logFormat | quote }}
        - --log-level
        - {{ .Values.logLevel | quote }}
        - serve
        - --config
        - /etc/mailproxy/mailproxy.yaml
      ports:
        {{- range (include "mailproxy.userConfig" . | fromYaml).listeners }}
        - name: {{ .name }}
          containerPort: {{ regexFind "[0-9]+$" (toString .address) }}
          protocol: TCP
        {{- end }}
        - name: metrics
          containerPort: {{ include "mailproxy.metricsPort" . }}
          protocol: TCP
      {{- with .Values.extraEnv }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: {{ .Values.readinessPath }}
          port: metrics
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      {{- if .Values.startupProbe.enabled }}
      startupProbe:
        httpGet:
          path: /healthz
          port: metrics
        {{- toYaml (omit .Values.startupProbe "enabled") | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/mailproxy/mailproxy.yaml
          subPath: mailproxy.yaml
          readOnly: true
        - name: tmp
          mountPath: /tmp
        - name: data
          mountPath: {{ .Values.gateway.dataPath }}
        {{- if .Values.tls.enabled }}
        - name: tls
          mountPath: {{ .Values.tls.mountPath }}
          readOnly: true
        {{- end }}
        {{- range $i, $extra := .Values.tls.extraSecrets }}
        - name: tls-extra-{{ $i }}
          mountPath: {{ $extra.mountPath }}
          readOnly: true
        {{- end }}
        {{- if include "mailproxy.gatewayKeyEnabled" . }}
        - name: gateway-key
          mountPath: {{ .Values.gateway.key.mountPath }}
          readOnly: true
        {{- end }}
        {{- if include "mailproxy.postgresqlEnabled" . }}
        - name: gateway-postgresql
          mountPath: {{ .Values.gateway.postgresql.mountPath }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    {{- with .Values.extraContainers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "mailproxy.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmpSizeLimit }}
    {{- if not (include "mailproxy.usesStatefulSet" .) }}
    - name: data
      emptyDir: {}
    {{- else if .Values.gateway.persistence.existingClaim }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ .Values.gateway.persistence.existingClaim }}
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ include "mailproxy.tlsSecretName" . }}
        defaultMode: 0440
    {{- end }}
    {{- range $i, $extra := .Values.tls.extraSecrets }}
    - name: tls-extra-{{ $i }}
      secret:
        secretName: {{ $extra.secretName }}
        defaultMode: 0440
    {{- end }}
    {{- if include "mailproxy.gatewayKeyEnabled" . }}
    - name: gateway-key
      secret:
        secretName: {{ include "mailproxy.gatewayKeySecretName" . }}
        defaultMode: 0440
        items:
          - key: {{ .Values.gateway.key.secretKey }}
            path: {{ .Values.gateway.key.secretKey }}
    {{- end }}
    {{- if include "mailproxy.postgresqlEnabled" . }}
    - name: gateway-postgresql
      secret:
        secretName: {{ .Values.gateway.postgresql.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.gateway.postgresql.urlKey }}
            path: {{ .Values.gateway.postgresql.urlKey }}
          {{- if .Values.gateway.postgresql.passwordKey }}
          - key: {{ .Values.gateway.postgresql.passwordKey }}
            path: {{ .Values.gateway.postgresql.passwordKey }}
          {{- end }}
    {{- end }}
  {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
