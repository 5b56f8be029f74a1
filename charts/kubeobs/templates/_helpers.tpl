{{/* Names ------------------------------------------------------------------------------------- */}}
{{- define "kubeobs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubeobs.fullname" -}}
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

{{- define "kubeobs.collector.fullname" -}}
{{- printf "%s-collector" (include "kubeobs.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubeobs.dns.fullname" -}}
{{- printf "%s-dns" (include "kubeobs.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubeobs.collector.serviceAccountName" -}}
{{- if .Values.serviceAccount.collector.create }}
{{- default (include "kubeobs.collector.fullname" .) .Values.serviceAccount.collector.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.collector.name }}
{{- end }}
{{- end }}

{{- define "kubeobs.dns.serviceAccountName" -}}
{{- if .Values.serviceAccount.dns.create }}
{{- default (include "kubeobs.dns.fullname" .) .Values.serviceAccount.dns.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.dns.name }}
{{- end }}
{{- end }}

{{/* Labels: pass (dict "ctx" $ "component" "collector") ------------------------------------------ */}}
{{- define "kubeobs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeobs.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kubeobs.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kubeobs.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: kubeobs
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kubeobs.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* API versions: what the target cluster serves (`.Capabilities`), with the kube version as a guard,
     because client-side rendering always lists the newest groups. */}}
{{- define "kubeobs.pdb.apiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "policy/v1") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end }}
{{- end }}

{{- define "kubeobs.hpa.apiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "autoscaling/v2") (semverCompare ">=1.23-0" .Capabilities.KubeVersion.Version) -}}
autoscaling/v2
{{- else -}}
autoscaling/v2beta2
{{- end }}
{{- end }}

{{- define "kubeobs.hasMonitoringAPI" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/* The container security context shared by every container (non-root, read-only, no capabilities). */}}
{{- define "kubeobs.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: [ALL]
{{- if .add }}
  add: {{ toJson .add }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* NetworkPolicy rules */}}
{{- define "kubeobs.np.apiserverEgress" -}}
- {{- with .cidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
  ports:
    {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}
{{- define "kubeobs.np.clusterDNSEgress" -}}
# name resolution of Elasticsearch hosts (the cluster DNS)
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end }}
{{- define "kubeobs.np.metricsIngress" -}}
- ports:
    - protocol: TCP
      port: {{ .port }}
  {{- with .from }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
