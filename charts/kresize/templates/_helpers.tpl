{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "kresize.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every object: the release name when it contains the chart name (release `kresize`
gives kresize-api, kresize-operator, ...), else <release>-<chart>.
*/}}
{{- define "kresize.fullname" -}}
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

{{/*
Name of one component's objects: kresize.componentName (dict "ctx" $ "component" "api"). The full name is
cut to 50 characters, or less for a component name over 12 characters, so the result fits 63.
*/}}
{{- define "kresize.componentName" -}}
{{- $room := int (min 50 (sub 62 (len .component))) }}
{{- printf "%s-%s" (include "kresize.fullname" .ctx | trunc $room | trimSuffix "-") .component }}
{{- end }}

{{- define "kresize.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of a component: include "kresize.selectorLabels" (dict "ctx" $ "component" "api").
*/}}
{{- define "kresize.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kresize.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
All labels of a component's objects.
*/}}
{{- define "kresize.labels" -}}
helm.sh/chart: {{ include "kresize.chart" .ctx }}
{{ include "kresize.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: kresize
{{- end }}

{{/*
Image reference of a kresize component: include "kresize.image" (dict "ctx" $ "component" "api").
*/}}
{{- define "kresize.image" -}}
{{- $own := index .ctx.Values .component "image" }}
{{- $repo := $own.repository | default (printf "%s/%s" (trimSuffix "/" .ctx.Values.image.repositoryPrefix) .component) }}
{{- $tag := $own.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion }}
{{- printf "%s:%s" $repo (toString $tag) }}
{{- end }}

{{- define "kresize.serviceAccountName" -}}
{{- include "kresize.componentName" . }}
{{- end }}

{{/*
Name of the Secret holding the S3 credentials (keys accessKey and secretKey).
*/}}
{{- define "kresize.s3SecretName" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else }}
{{- include "kresize.componentName" (dict "ctx" . "component" "s3") }}
{{- end }}
{{- end }}

{{/*
The S3 server the components use: minio, seaweedfs or external (s3.server). The pre-s3.server switch
`minio.enabled=false` still selects external while s3.server is left at minio.
*/}}
{{- define "kresize.s3Server" -}}
{{- $server := .Values.s3.server | default "minio" | toString }}
{{- if and (eq $server "minio") (hasKey .Values.minio "enabled") (not .Values.minio.enabled) }}
{{- $server = "external" }}
{{- end }}
{{- if not (has $server (list "minio" "seaweedfs" "external")) }}
{{- fail (printf "s3.server must be minio, seaweedfs or external, not %q" $server) }}
{{- end }}
{{- $server }}
{{- end }}

{{/*
Image reference of a bundled S3 server, pinned by digest when one is set:
include "kresize.s3ServerImage" .Values.minio.image gives repository:tag[@digest].
*/}}
{{- define "kresize.s3ServerImage" -}}
{{- $ref := printf "%s:%s" .repository (toString .tag) }}
{{- with .digest }}
{{- $ref = printf "%s@%s" $ref . }}
{{- end }}
{{- $ref }}
{{- end }}

{{/*
Host:port of the S3 endpoint the API and the operator use: the selected bundled server's Service
(<fullname>-minio or <fullname>-seaweedfs), or s3.endpoint for an external S3.
*/}}
{{- define "kresize.s3Endpoint" -}}
{{- $server := include "kresize.s3Server" . }}
{{- if eq $server "external" }}
{{- required "s3.endpoint is required with s3.server=external" .Values.s3.endpoint }}
{{- else }}
{{- $service := (index .Values $server).service }}
{{- printf "%s.%s.svc:%v" (include "kresize.componentName" (dict "ctx" . "component" $server)) .Release.Namespace $service.port }}
{{- end }}
{{- end }}

{{/*
The bundled servers speak plain HTTP inside the cluster; s3.secure applies to an external S3 only.
*/}}
{{- define "kresize.s3Secure" -}}
{{- if eq (include "kresize.s3Server" .) "external" }}{{ .Values.s3.secure | toString }}{{ else }}false{{ end }}
{{- end }}

{{/*
Fails the render on inconsistent S3 settings.
*/}}
{{- define "kresize.validate" -}}
{{- if eq (include "kresize.s3Server" .) "external" }}
{{- if not .Values.s3.endpoint }}
{{- fail "with s3.server=external, set s3.endpoint to the host:port of the external S3" }}
{{- end }}
{{- if not .Values.s3.existingSecret }}
{{- fail "with s3.server=external, set s3.existingSecret to a Secret with keys accessKey and secretKey for the external S3" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The environment shared by the API and the operator (S3, namespace, image limits); S3 credentials
come from the Secret only.
*/}}
{{- define "kresize.componentEnv" -}}
- name: KRESIZE_S3_ENDPOINT
  value: {{ include "kresize.s3Endpoint" . | quote }}
- name: KRESIZE_S3_SECURE
  value: {{ include "kresize.s3Secure" . | quote }}
- name: KRESIZE_S3_REGION
  value: {{ .Values.s3.region | quote }}
- name: KRESIZE_S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
{{- with .Values.s3.publicEndpoint }}
- name: KRESIZE_S3_PUBLIC_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: KRESIZE_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "kresize.s3SecretName" . }}
      key: accessKey
- name: KRESIZE_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "kresize.s3SecretName" . }}
      key: secretKey
- name: KRESIZE_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: KRESIZE_MAX_FILE_BYTES
  value: {{ .Values.limits.maxFileBytes | int64 | quote }}
- name: KRESIZE_MAX_PIXELS
  value: {{ .Values.limits.maxPixels | int64 | quote }}
- name: KRESIZE_MAX_OUTPUT_PIXELS
  value: {{ .Values.limits.maxOutputPixels | int64 | quote }}
- name: KRESIZE_MAX_TOTAL_OUTPUT_PIXELS
  value: {{ .Values.limits.maxTotalOutputPixels | int64 | quote }}
{{- end }}

{{/*
The annotations of a component's pods: its own podAnnotations over, with metrics.scrapeAnnotations, the
prometheus.io/* ones for its metrics port (none when the port is 0). Empty when there are none.
include "kresize.podAnnotations" (dict "ctx" $ "own" .Values.api.podAnnotations "metricsPort" .Values.api.port)
*/}}
{{- define "kresize.podAnnotations" -}}
{{- $annotations := dict }}
{{- if and .ctx.Values.metrics.scrapeAnnotations .metricsPort }}
{{- $_ := set $annotations "prometheus.io/scrape" "true" }}
{{- $_ := set $annotations "prometheus.io/port" (toString .metricsPort) }}
{{- $_ := set $annotations "prometheus.io/path" "/metrics" }}
{{- end }}
{{- $annotations = merge (deepCopy (.own | default dict)) $annotations }}
{{- with $annotations }}
{{- dict "annotations" . | toYaml }}
{{- end }}
{{- end }}

{{/*
The writable /tmp of every container.
*/}}
{{- define "kresize.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "kresize.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
Name of the Secret holding the API's bearer tokens (one key per tenant).
*/}}
{{- define "kresize.apiTokensSecretName" -}}
{{- .Values.api.auth.existingSecret | default (include "kresize.componentName" (dict "ctx" . "component" "api-tokens")) }}
{{- end }}
