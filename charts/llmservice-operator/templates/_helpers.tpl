{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "llmservice-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every object's name (<release>-<chart>, or the release name if it
already contains the chart name).
*/}}
{{- define "llmservice-operator.fullname" -}}
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
Chart name and version, as the helm.sh/chart label.
*/}}
{{- define "llmservice-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of the release (a Deployment's selector is immutable).
*/}}
{{- define "llmservice-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmservice-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
*/}}
{{- define "llmservice-operator.labels" -}}
helm.sh/chart: {{ include "llmservice-operator.chart" . }}
{{ include "llmservice-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: llmservice
{{- end }}

{{/*
ServiceAccount the operator runs as.
*/}}
{{- define "llmservice-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmservice-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Operator image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "llmservice-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{/*
Rules the operator needs in every namespace it serves: exactly the API calls of
llmservice_operator/k8s.py and kopf's watches, patches and events.
*/}}
{{- define "llmservice-operator.namespacedRules" -}}
# kopf watches LLMServices (list, watch) and patches an annotation that wakes a delayed retry
# (patch; its other bookkeeping stays in the operator's memory); the periodic resync lists them
# and owned-RayService events fetch the parent (get).
- apiGroups: ["llmservice.dev"]
  resources: ["llmservices"]
  verbs: ["get", "list", "watch", "patch"]
# The operator writes status (conditions, endpoint, replicas) through the status subresource.
- apiGroups: ["llmservice.dev"]
  resources: ["llmservices/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion (the RayService's, to its LLMService) need update on
# the owner's finalizers subresource where OwnerReferencesPermissionEnforcement is on.
- apiGroups: ["llmservice.dev"]
  resources: ["llmservices/finalizers"]
  verbs: ["update"]
# The rendered child: read before applying, server-side applied (an apply that creates the object
# needs create as well as patch), and watched for KubeRay status and drift. Deleted only when a
# deleted LLMService of the same name left it behind (UID precondition), which is what the garbage
# collector would do: after API server trouble its retries wait many minutes.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# KubeRay v1.5 never passes worker-group sizes from a RayService on to its RayClusters: the
# operator reads the RayService's clusters and patches only replicas/minReplicas/maxReplicas
# (and workersToDelete on a scale-down). No create, no delete: KubeRay owns the clusters.
- apiGroups: ["ray.io"]
  resources: ["rayclusters"]
  verbs: ["get", "patch"]
# The rendered NetworkPolicy of each LLMService's Ray pods: read, server-side applied, watched
# for drift, and deleted (UID precondition) only when spec.networkPolicy.enabled turns false.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# serve_app's code for the Ray pods: one immutable ConfigMap per namespace and code digest,
# looked up by name and created when missing. The look is granted for that one name only (the
# digest of this release's code, files/serve-app-configmap.txt, generated with the operator);
# nothing is listed, changed or deleted.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: [{{ .Files.Get "files/serve-app-configmap.txt" | trim | quote }}]
  verbs: ["get"]
# Which worker pods host no Serve replica, so a scale-down removes an idle one.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Ray's own Serve state (running replicas, the version the app runs) from the head's dashboard
# through the API server's service proxy: the read KubeRay itself makes with
# --use-kubernetes-proxy. Status is built from it; nothing is ever sent but GET.
- apiGroups: [""]
  resources: ["services/proxy"]
  verbs: ["get"]
# A canary's gate: the router's per-version metrics from each Ray pod's metrics port (8080)
# through the API server's pod proxy. Only GET.
- apiGroups: [""]
  resources: ["pods/proxy"]
  verbs: ["get"]
# Events about each apply and each rejected spec (core/v1 today; events.k8s.io is the same
# Event storage under its newer API, so granting both adds no power). list, watch: KubeRay's
# InvalidRayServiceSpec Warning on a RayService is the only record that it refused it (one
# watch of Warning events about RayServices keeps them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Checks across values that a JSON schema cannot explain in plain words.
*/}}
{{- define "llmservice-operator.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.peering.enabled) }}
{{- fail (printf "replicas=%d needs peering.enabled=true: without kopf peering every replica would reconcile the same LLMServices (see \"Replicas and peering\" in the chart README)" (int .Values.replicas)) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.enabled=true: there is no metrics endpoint to scrape" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "serviceAccount.name is required when serviceAccount.create=false" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.liveness.port)) }}
{{- fail (printf "metrics.port and liveness.port are both %d: they must differ" (int .Values.metrics.port)) }}
{{- end }}
{{- end }}
