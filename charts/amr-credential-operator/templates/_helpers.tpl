{{/* Chart name, shortened to fit label values. */}}
{{- define "amr-credential-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: the release name, plus the chart name unless the release
name already contains it. */}}
{{- define "amr-credential-operator.fullname" -}}
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

{{/* Labels that select the operator's pods; they never change across upgrades. */}}
{{- define "amr-credential-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "amr-credential-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "amr-credential-operator.labels" -}}
{{- $chart := printf "%s-%s" .Chart.Name .Chart.Version -}}
helm.sh/chart: {{ $chart | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "amr-credential-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: amr-credential-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Name of the ServiceAccount the operator runs as. */}}
{{- define "amr-credential-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "amr-credential-operator.fullname" .) .Values.serviceAccount.name }}
{{- else if .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- else }}
{{- fail "serviceAccount.create is false: serviceAccount.name must name an existing one" }}
{{- end }}
{{- end }}

{{/* The container image reference; the tag defaults to the chart's appVersion. */}}
{{- define "amr-credential-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the extra CA bundle is mounted. */}}
{{- define "amr-credential-operator.caDir" -}}
/etc/amr-credential-operator/ca
{{- end }}

{{/* Permissions on the watched namespaces: the AmrCredentials themselves, the Secrets the
operator reads and writes, the ServiceAccounts whose tokens WorkloadIdentity exchanges, Events,
and the workloads restarted after a Secret changes. */}}
{{- define "amr-credential-operator.watchRules" -}}
- apiGroups: ["amr.entraid.dev"]
  resources: ["amrcredentials"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["amr.entraid.dev"]
  resources: ["amrcredentials/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]
{{- end }}
