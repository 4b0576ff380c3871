{{/* The release's name for its objects: the release name, with "optsidecar" unless it says so already. */}}
{{- define "optsidecar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "optsidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ ternary "trainer" "parameter-server" (eq .Values.mode "sidecar") }}
{{- end -}}

{{- define "optsidecar.labels" -}}
{{ include "optsidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "optsidecar.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* A memory quantity in MiB: "16Gi", "16384Mi" or "1Ti". */}}
{{- define "optsidecar.mebibytes" -}}
{{- $q := toString . -}}
{{- if hasSuffix "Ti" $q -}}{{ mul (trimSuffix "Ti" $q | int64) 1048576 }}
{{- else if hasSuffix "Gi" $q -}}{{ mul (trimSuffix "Gi" $q | int64) 1024 }}
{{- else if hasSuffix "Mi" $q -}}{{ trimSuffix "Mi" $q | int64 }}
{{- else -}}{{ fail (printf "server.memory %q: give it in Mi, Gi or Ti" $q) }}
{{- end -}}
{{- end -}}

{{/* The JVM heap in MiB: server.heapPercent of server.memory. */}}
{{- define "optsidecar.heapMebibytes" -}}
{{- div (mul (include "optsidecar.mebibytes" .Values.server.memory | int64) .Values.server.heapPercent) 100 -}}
{{- end -}}

{{/* --memory-limit in MiB: server.modelMemoryPercent of the heap. */}}
{{- define "optsidecar.modelMebibytes" -}}
{{- div (mul (include "optsidecar.heapMebibytes" . | int64) .Values.server.modelMemoryPercent) 100 -}}
{{- end -}}

{{/* The server's container, for either mode. */}}
{{- define "optsidecar.serverContainer" -}}
{{- $sidecar := eq .Values.mode "sidecar" -}}
name: optsidecar
image: {{ include "optsidecar.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if $sidecar }}
restartPolicy: Always  # a native sidecar: started before the trainer, stopped after it
{{- end }}
env:
{{- if $sidecar }}
  # The API on a Unix socket only: nothing outside the pod reaches it.
  - name: OPTSIDECAR_LISTEN
    value: {{ printf "unix:%s/optsidecar.sock" .Values.server.socketDir | quote }}
  - name: OPTSIDECAR_SHM_DIR
    value: {{ .Values.sharedMemory.mountPath | quote }}
{{- else }}
  - name: OPTSIDECAR_BIND
    value: 0.0.0.0
  - name: OPTSIDECAR_PORT
    value: {{ .Values.server.port | quote }}
  - name: OPTSIDECAR_TLS_CERT
    value: /etc/optsidecar/tls/tls.crt
  - name: OPTSIDECAR_TLS_KEY
    value: /etc/optsidecar/tls/tls.key
  {{- if .Values.tls.mutual }}
  - name: OPTSIDECAR_TLS_CLIENT_CA
    value: /etc/optsidecar/tls/ca.crt
  {{- end }}
{{- end }}
  - name: OPTSIDECAR_HEALTH_PORT
    value: {{ .Values.server.healthPort | quote }}
  - name: OPTSIDECAR_AUTH_TOKENS
    value: /etc/optsidecar/tokens/tokens.json
  - name: OPTSIDECAR_STATE_DIR
    value: /var/lib/optsidecar
{{- with .Values.server.restore }}
  - name: OPTSIDECAR_RESTORE
    value: {{ . | quote }}
{{- end }}
{{- if .Values.server.snapshotIntervalSeconds }}
  - name: OPTSIDECAR_SNAPSHOT_INTERVAL
    value: {{ .Values.server.snapshotIntervalSeconds | quote }}
{{- end }}
{{- if .Values.server.snapshotEverySteps }}
  - name: OPTSIDECAR_SNAPSHOT_EVERY_STEPS
    value: {{ .Values.server.snapshotEverySteps | quote }}
{{- end }}
  - name: OPTSIDECAR_SNAPSHOT_KEEP
    value: {{ .Values.server.snapshotKeep | quote }}
  # Memory tied to the container's limit ({{ .Values.server.memory }}): heap {{ .Values.server.heapPercent }}% of it,
  # models {{ .Values.server.modelMemoryPercent }}% of the heap.
  - name: JDK_JAVA_OPTIONS
    value: {{ printf "-Xmx%sm -XX:+ExitOnOutOfMemoryError" (include "optsidecar.heapMebibytes" .) | quote }}
  - name: OPTSIDECAR_MEMORY_LIMIT
    value: {{ printf "%sm" (include "optsidecar.modelMebibytes" .) | quote }}
{{- with .Values.server.extraEnv }}
{{ toYaml . | indent 2 }}
{{- end }}
ports:
{{- if not $sidecar }}
  - name: grpc
    containerPort: {{ .Values.server.port }}
{{- end }}
  - name: health
    containerPort: {{ .Values.server.healthPort }}
# Restoring a large snapshot and replaying its journal can take long, and the health service says
# NOT_SERVING until it is done: the startup probe waits periodSeconds x failureThreshold.
startupProbe:
  grpc:
    port: {{ .Values.server.healthPort }}
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
readinessProbe:
  grpc:
    port: {{ .Values.server.healthPort }}
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
livenessProbe:
  grpc:
    port: {{ .Values.server.healthPort }}
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
resources:
  requests:
    cpu: {{ .Values.server.cpu | quote }}
    memory: {{ .Values.server.memory }}
  limits:
    {{- if not $sidecar }}
    cpu: {{ .Values.server.cpu | quote }}
    {{- end }}
    memory: {{ .Values.server.memory }}
    {{- if .Values.server.gpus }}
    nvidia.com/gpu: {{ .Values.server.gpus }}
    {{- end }}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: [ALL]
volumeMounts:
  - name: state
    mountPath: /var/lib/optsidecar
{{- if $sidecar }}
  - name: api-socket
    mountPath: {{ .Values.server.socketDir }}
  - name: shm
    mountPath: {{ .Values.sharedMemory.mountPath }}
{{- else }}
  - name: tls
    mountPath: /etc/optsidecar/tls
    readOnly: true
{{- end }}
  - name: tokens
    mountPath: /etc/optsidecar/tokens
    readOnly: true
  - name: tmp  # Netty unpacks its native transport here
    mountPath: /tmp
{{- end -}}

{{/* The volumes both modes give the server's container. */}}
{{- define "optsidecar.serverVolumes" -}}
- name: tokens
  secret:
    secretName: {{ .Values.auth.tokensSecret }}
    items:
      - key: {{ .Values.auth.tokensKey }}
        path: tokens.json
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "optsidecar.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
{{ toYaml . }}
{{- end }}
{{- with .Values.affinity }}
affinity:
{{ toYaml . | indent 2 }}
{{- end }}
{{- end -}}
