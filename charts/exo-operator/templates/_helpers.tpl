{{/* The release's full name, the prefix of every object this chart makes (63 characters at most). */}}
{{- define "exo-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "exo-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "exo-operator.labels" -}}
{{ include "exo-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "exo-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "exo-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference from {repository, tag}; the tag defaults to the chart's appVersion. */}}
{{- define "exo-operator.image" -}}
{{- $image := index . 0 -}}
{{- $chart := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* True (non-empty) when several operator pods must elect an active one. */}}
{{- define "exo-operator.peered" -}}
{{- if gt (int .Values.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{/*
RBAC rules on the namespaced resources the operator reads and writes: its ExoModels (kopf
patches them for its own bookkeeping), the children it server-side applies, the pods and logs it
reads to say why a model is stuck, and the Events it posts. Garbage collection removes children
through their owner references, whose blockOwnerDeletion needs update on exomodels/finalizers
where OwnerReferencesPermissionEnforcement is on; the operator itself deletes only fetch Jobs and
disruption budgets its plan dropped. Secrets: get only, to see when a model's token Secret
changed after a fetch it refused (the token itself reaches the fetch pod through the pod's own
secretKeyRef). Events: list, to quote the kubelet's words when a volume cannot attach.
*/}}
{{- define "exo-operator.namespacedRules" -}}
- apiGroups: [exo.dev]
  resources: [exomodels]
  verbs: [get, list, watch, patch]
- apiGroups: [exo.dev]
  resources: [exomodels/status]
  verbs: [get, patch]
- apiGroups: [exo.dev]
  resources: [exomodels/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [persistentvolumeclaims, services]
  verbs: [get, list, watch, create, patch]
# delete: a fetch Job superseded by a new try, or one to run again.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# delete: the budget goes when a model drops to one replica.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# delete: the head of a split model's group that spec.replicas no longer counts.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
# The RPC workers of a model split across nodes; delete: when spec.distributed or their group goes.
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch, list]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end -}}
