{{/* Chart name, or nameOverride, truncated to 59 characters (room for "-mic"/"-nmi"). */}}
{{- define "aad-pod-identity.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 59 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name, used by the user-facing ClusterRoles. */}}
{{- define "aad-pod-identity.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aad-pod-identity.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aad-pod-identity.mic.fullname" -}}
{{- printf "%s-mic" (include "aad-pod-identity.name" .) -}}
{{- end -}}

{{- define "aad-pod-identity.nmi.fullname" -}}
{{- printf "%s-nmi" (include "aad-pod-identity.name" .) -}}
{{- end -}}

{{- define "aad-pod-identity.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aad-pod-identity.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aad-pod-identity.labels" -}}
{{ include "aad-pod-identity.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "aad-pod-identity.chart" . }}
{{- end -}}

{{- define "aad-pod-identity.mic.selectorLabels" -}}
{{ include "aad-pod-identity.selectorLabels" . }}
app.kubernetes.io/component: mic
{{- end -}}

{{- define "aad-pod-identity.mic.labels" -}}
{{ include "aad-pod-identity.labels" . }}
app.kubernetes.io/component: mic
{{- end -}}

{{- define "aad-pod-identity.nmi.selectorLabels" -}}
{{ include "aad-pod-identity.selectorLabels" . }}
app.kubernetes.io/component: nmi
{{- end -}}

{{- define "aad-pod-identity.nmi.labels" -}}
{{ include "aad-pod-identity.labels" . }}
app.kubernetes.io/component: nmi
{{- end -}}

{{- define "aad-pod-identity.standard" -}}
{{- if ne .Values.operationMode "managed" -}}true{{- end -}}
{{- end -}}

{{/*
The image of a component: "<image.repository>/<name>:<tag>". image.repository has no default: a
name on a public registry that we do not control could be registered by anyone, and NMI runs
privileged on every node's host network. Rendering fails with how to build and set one.
*/}}
{{- define "aad-pod-identity.image" -}}
{{- $msg := "image.repository is not set. This chart ships no default image (a public registry name could be registered by anyone). Build the mic and nmi images with hack/images.sh, push them to a registry you control, then install with --set image.repository=<registry>/<path>, e.g. --set image.repository=myregistry.azurecr.io/aadpodid" -}}
{{- $repository := required $msg .root.Values.image.repository | trimSuffix "/" -}}
{{- printf "%s/%s:%s" $repository .component.image .component.tag -}}
{{- end -}}
