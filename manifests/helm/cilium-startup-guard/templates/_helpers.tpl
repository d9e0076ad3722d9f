{{/* Object names are fixed: one release per cluster, and the certs command's defaults name them. */}}
{{- define "csg.name" -}}cilium-startup-guard{{- end }}

{{/* Labels of every object's metadata: the kustomize install's, then Helm's own. Call with (dict "root" $ "component" "webhook"). */}}
{{- define "csg.labels" -}}
app.kubernetes.io/name: cilium-startup-guard
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/part-of: cilium-startup-guard
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels of a component; immutable in Deployments, so never Helm's version labels. */}}
{{- define "csg.selector" -}}
app.kubernetes.io/name: cilium-startup-guard
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/* Labels of a component's pods. */}}
{{- define "csg.podLabels" -}}
{{ include "csg.selector" . }}
app.kubernetes.io/part-of: cilium-startup-guard
{{- end }}

{{- define "csg.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The pod and container security of every pod in this chart (the image's user, nothing else allowed). */}}
{{- define "csg.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "csg.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The whole config file, read by the webhook (reloaded) and the controller (at start-up). */}}
{{/* The controller's unmanaged scope is all, and it recycles (an unset action means observe for scope all). */}}
{{- define "csg.unmanagedAll" -}}
{{- if eq .Values.controller.unmanaged.scope "all" }}true{{ end -}}
{{- end }}
{{- define "csg.unmanagedRecycle" -}}
{{- if and (eq .Values.controller.unmanaged.scope "all") (eq (.Values.controller.unmanaged.action | default "observe") "recycle") }}true{{ end -}}
{{- end }}

{{- define "csg.config" -}}
{{- $v := .Values -}}
{{- /* Helm drops a null value; the file spells the unset action out, as manifests/base/config.yaml does. */ -}}
{{- $unmanaged := merge (dict) $v.controller.unmanaged -}}
{{- $_ := set $unmanaged "action" $v.controller.unmanaged.action -}}
{{- toYaml (dict
      "mode" $v.mode
      "allowOptOut" $v.allowOptOut
      "failureMode" $v.failureMode
      "ciliumTaintKey" $v.ciliumTaintKey
      "readinessGate" $v.readinessGate
      "kinds" $v.kinds
      "exemptions" $v.exemptions
      "replacementTolerations" $v.replacementTolerations
      "server" $v.webhook.server
      "controller" (merge (dict "unmanaged" $unmanaged "workers" $v.controller.workers) $v.controller.leaderElection)) }}
{{- end }}

{{/*
The webhook configurations' objectSelector: each exemption made of one label only becomes `key NotIn [values]`,
so the webhook never sees those objects; then webhook.extraObjectSelectorExpressions.
*/}}
{{- define "csg.objectSelector" -}}
{{- $byKey := dict -}}
{{- range .Values.exemptions -}}
{{- if and (not .namespace) (not .name) (eq (len (.matchLabels | default dict)) 1) -}}
{{- range $key, $value := .matchLabels -}}
{{- $_ := set $byKey $key (append (get $byKey $key | default list) $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
matchExpressions:
{{- range $key := keys $byKey | sortAlpha }}
  - key: {{ $key }}
    operator: NotIn
    values: {{ get $byKey $key | toJson }}
{{- end }}
{{- with .Values.webhook.extraObjectSelectorExpressions }}
{{ toYaml . | indent 2 }}
{{- end }}
{{- end }}

{{/* The namespaceSelector: never this release's own namespace, nor a namespace exempted as a whole. */}}
{{- define "csg.namespaceSelector" -}}
{{- $namespaces := list .Release.Namespace -}}
{{- range .Values.exemptions -}}
{{- if and .namespace (not .name) (not .matchLabels) -}}
{{- $namespaces = append $namespaces .namespace -}}
{{- end -}}
{{- end -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ $namespaces | uniq | toJson }}
{{- end }}

{{/*
The pod of the install Job and of the renewal CronJob. The Job's name carries a hash of it: a pod template is
immutable, so an upgrade that changes it (a new image) creates a new Job instead of failing, and an upgrade that
does not keeps the same Job. The Job is an ordinary release object, not a hook: with `helm install --wait` a
post-install hook would wait for webhook pods that cannot start before the Job has written their Secret.
Running it again is harmless: it renews only what is due.
*/}}
{{- define "csg.certsPod" -}}
metadata:
  labels:
    {{- include "csg.podLabels" "certs" | nindent 4 }}
spec:
  restartPolicy: OnFailure
  serviceAccountName: {{ include "csg.name" . }}-certs
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  tolerations:
    - key: {{ .Values.ciliumTaintKey }}
      operator: Exists
  securityContext:
    {{- include "csg.podSecurityContext" . | nindent 4 }}
  containers:
    - name: certs
      image: {{ include "csg.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - certs
        - --in-cluster
        - --namespace=$(POD_NAMESPACE)
        - --service={{ include "csg.name" . }}-webhook
        - --secret={{ include "csg.name" . }}-webhook-tls
        - --webhook-configuration={{ include "csg.name" . }}
        - --renew-before={{ .Values.certsJob.renewBeforeDays }}
      env:
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
      resources:
        {{- toYaml .Values.certsJob.resources | nindent 8 }}
      securityContext:
        {{- include "csg.containerSecurityContext" . | nindent 8 }}
{{- end }}

{{/*
The alerting rules of docs/operations.md, as a YAML list; manifests/components/alerts holds the same rules for
the kustomize install (tests/test_alerts.py keeps the two equal, parses every expression and checks every metric
name against what the code exports).
*/}}
{{- define "csg.alertRules" -}}
- alert: CiliumStartupGuardWebhookDown
  expr: kube_deployment_status_replicas_available{namespace="{{ .Release.Namespace }}", deployment="cilium-startup-guard-webhook"} == 0
  for: 5m
  labels:
    severity: critical
  annotations:
    summary: No replica of the cilium-startup-guard webhook is available.
    description: >-
      kube-apiserver cannot call the webhook: DaemonSets are admitted unchecked (failurePolicy Ignore), or
      refused (strict install).
- alert: CiliumStartupGuardWebhookFailingOpen
  expr: sum by (name) (increase(apiserver_admission_webhook_fail_open_count{name=~"(mutate|validate)\\.startupguard\\.io"}[10m])) > 0
  labels:
    severity: warning
  annotations:
    summary: 'kube-apiserver admitted requests without the webhook {{ "{{ $labels.name }}" }}.'
    description: >-
      Calls to the webhook failed (unreachable, TLS, timeout) and failurePolicy Ignore let the requests
      through unchecked in the last 10 minutes.
- alert: CiliumStartupGuardCertificateExpiresSoon
  expr: min(cilium_startup_guard_certificate_not_after_timestamp_seconds) - time() < 14 * 86400
  for: 1h
  labels:
    severity: warning
  annotations:
    summary: The webhook's serving certificate expires within 14 days.
    description: >-
      Renewal is due 30 days before expiry, so it has failed. When it expires kube-apiserver can no
      longer call the webhook.
- alert: CiliumStartupGuardAdmissionErrors
  expr: sum by (endpoint, reason) (increase(cilium_startup_guard_admission_errors_total[10m])) > 0
  for: 10m
  labels:
    severity: warning
  annotations:
    summary: 'The webhook answers {{ "{{ $labels.endpoint }}" }} requests with errors ({{ "{{ $labels.reason }}" }}).'
    description: Admission reviews end in an error; internal errors are allowed or denied per failureMode.
- alert: CiliumStartupGuardConfigRejected
  expr: min(cilium_startup_guard_config_last_reload_successful) == 0
  for: 10m
  labels:
    severity: warning
  annotations:
    summary: The webhook rejected its changed configuration file and runs on the previous one.
- alert: CiliumStartupGuardGatesReleasedByTimeout
  expr: sum(increase(cilium_startup_guard_gates_released_total{reason="max-wait", dry_run="false"}[1h])) > 0
  labels:
    severity: warning
  annotations:
    summary: Readiness gates were released because Cilium never managed their pods in time.
    description: >-
      Pods waited past the controller's release-after limit without a ready CiliumEndpoint; they now run
      unprotected.
- alert: CiliumStartupGuardCiliumEndpointsUnavailable
  expr: min(cilium_startup_guard_cilium_endpoints_available) == 0
  for: 10m
  labels:
    severity: warning
  annotations:
    summary: The API server does not serve ciliumendpoints; gates are released after the grace period.
- alert: CiliumStartupGuardControllerNoLeader
  expr: (sum(cilium_startup_guard_leader) or vector(0)) < 1
  for: 5m
  labels:
    severity: warning
  annotations:
    summary: No gate controller replica holds the leader Lease; gated pods stay unready.
- alert: CiliumStartupGuardEvictionsRefused
  expr: sum(rate(cilium_startup_guard_evictions_refused_total[10m])) > 0
  for: 1h
  labels:
    severity: warning
  annotations:
    summary: PodDisruptionBudgets have refused the controller's evictions for an hour.
    description: Unmanaged pods cannot be recycled; they keep running without Cilium managing their network.
- alert: CiliumStartupGuardUnmanagedPods
  expr: max by (namespace, owner_kind) (cilium_startup_guard_unmanaged_pods) > 0
  for: 15m
  labels:
    severity: warning
  annotations:
    summary: '{{ "{{ $value }}" }} {{ "{{ $labels.owner_kind }}" }} pod(s) in {{ "{{ $labels.namespace }}" }} run without Cilium managing their network.'
    description: >-
      Running on the pod network without a CiliumEndpoint on a node whose Cilium agent is ready, past the grace
      period and not recycled since; no network policy applies to them.
{{- end }}
