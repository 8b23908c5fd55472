{{/*
Names. The webhook's objectSelector excludes `app.kubernetes.io/name:
calmplane`, so that label is never the release's name: calmplane must never
mutate its own pods.
*/}}
{{- define "calmplane.name" -}}
calmplane
{{- end -}}

{{- define "calmplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "calmplane" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-calmplane" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Helm's labels, on every object beside its own `app.kubernetes.io/name`. */}}
{{- define "calmplane.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "calmplane.labels" -}}
app.kubernetes.io/name: {{ include "calmplane.name" . }}
{{ include "calmplane.helmLabels" . }}
{{- end -}}

{{/* The webhook's pods (selector of the Deployment, Service, PDB and NetworkPolicy). */}}
{{- define "calmplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "calmplane.name" . }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "calmplane.leaseMonitor.fullname" -}}
{{- printf "%s-lease-monitor" (include "calmplane.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "calmplane.leaseMonitor.labels" -}}
app.kubernetes.io/name: calmplane-lease-monitor
{{ include "calmplane.helmLabels" . }}
{{- end -}}

{{- define "calmplane.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "calmplane.helperImage" -}}
{{- if .Values.helperImage.digest -}}
{{- printf "%s:%s@%s" .Values.helperImage.repository .Values.helperImage.tag .Values.helperImage.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.helperImage.repository .Values.helperImage.tag -}}
{{- end -}}
{{- end -}}

{{- define "calmplane.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "existingSecret" -}}
{{- required "certificates.existingSecret.name is required with certificates.mode=existingSecret" .Values.certificates.existingSecret.name -}}
{{- else -}}
{{- printf "%s-tls" (include "calmplane.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The host names the apiserver calls (the serving certificate's names). */}}
{{- define "calmplane.serviceHost" -}}
{{- printf "%s.%s.svc" (include "calmplane.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* `https://host[:port]` of webhook.url, checked as `calmplane manifests --url` checks it. */}}
{{- define "calmplane.url" -}}
{{- $url := .Values.webhook.url | trimSuffix "/" -}}
{{- if $url -}}
{{- $u := urlParse $url -}}
{{- if or (ne $u.scheme "https") (not $u.host) $u.path $u.query $u.fragment $u.userinfo -}}
{{- fail (printf "webhook.url %q: the apiserver needs https://host[:port], with no path, query, fragment or user" .Values.webhook.url) -}}
{{- end -}}
{{- end -}}
{{- $url -}}
{{- end -}}

{{/* Where the readiness check and `helm test` reach calmplane. */}}
{{- define "calmplane.baseUrl" -}}
{{- $url := include "calmplane.url" . -}}
{{- if $url -}}
{{- $url -}}
{{- else -}}
{{- printf "https://%s:443" (include "calmplane.serviceHost" .) -}}
{{- end -}}
{{- end -}}

{{/*
The self-signed CA and serving certificate, made once per render and shared
by every template that needs them (the Secrets and the caBundle): a dict
with caCert, caKey, cert, key, notAfter and names. Kept across upgrades: the
CA as long as its Secret exists, the serving certificate while it is
`renewBeforeDays` from expiry and names the same hosts. `helm template` (no
cluster) always makes new ones.
*/}}
{{- define "calmplane.selfSigned" -}}
{{- if not (hasKey .Values "__calmplaneSelfSigned") -}}
{{- $full := include "calmplane.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $cfg := .Values.certificates.selfSigned -}}
{{- $dns := list (include "calmplane.serviceHost" .) (printf "%s.%s.svc.cluster.local" $full $ns) -}}
{{- $ips := list -}}
{{- $url := include "calmplane.url" . -}}
{{- if $url -}}
{{- $host := (urlParse $url).host | splitList ":" | first -}}
{{- if regexMatch "^[0-9.]+$" $host -}}
{{- $ips = append $ips $host -}}
{{- else -}}
{{- $dns = append $dns $host -}}
{{- end -}}
{{- end -}}
{{- $names := concat $dns $ips | join "," -}}
{{- $ca := dict -}}
{{- $caSecret := lookup "v1" "Secret" $ns (printf "%s-ca" $full) -}}
{{- if and $caSecret $caSecret.data (index $caSecret.data "tls.crt") (index $caSecret.data "tls.key") -}}
{{- $ca = buildCustomCert (index $caSecret.data "tls.crt") (index $caSecret.data "tls.key") -}}
{{- else -}}
{{- $ca = genCA (printf "%s CA" $full) (int $cfg.caValidityDays) -}}
{{- end -}}
{{- $out := dict "caCert" $ca.Cert "caKey" $ca.Key "names" $names -}}
{{- $tls := lookup "v1" "Secret" $ns (printf "%s-tls" $full) -}}
{{- $keep := false -}}
{{- if and $tls $tls.data $tls.metadata.annotations -}}
{{- $ann := $tls.metadata.annotations -}}
{{- $notAfter := index $ann "calmplane.dev/not-after" | default "" -}}
{{- if and $notAfter (eq (index $ann "calmplane.dev/names" | default "") $names) (eq (index $tls.data "ca.crt" | default "" | b64dec) $ca.Cert) -}}
{{- $renewAt := sub (toDate "2006-01-02T15:04:05Z07:00" $notAfter | unixEpoch | int64) (mul (int64 $cfg.renewBeforeDays) 86400) -}}
{{- if lt (now | unixEpoch | int64) $renewAt -}}
{{- $keep = true -}}
{{- $_ := set $out "cert" (index $tls.data "tls.crt" | b64dec) -}}
{{- $_ := set $out "key" (index $tls.data "tls.key" | b64dec) -}}
{{- $_ := set $out "notAfter" $notAfter -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $keep -}}
{{- $cert := genSignedCert (first $dns) $ips $dns (int $cfg.validityDays) $ca -}}
{{- $_ := set $out "cert" $cert.Cert -}}
{{- $_ := set $out "key" $cert.Key -}}
{{- $_ := set $out "notAfter" (now | dateModify (printf "+%dh" (mul (int $cfg.validityDays) 24)) | date "2006-01-02T15:04:05Z07:00") -}}
{{- end -}}
{{- $_ := set .Values "__calmplaneSelfSigned" $out -}}
{{- end -}}
{{- toJson (index .Values "__calmplaneSelfSigned") -}}
{{- end -}}

{{/* The caBundle (base64 PEM), or nothing with cert-manager (cainjector writes it). */}}
{{- define "calmplane.caBundle" -}}
{{- if eq .Values.certificates.mode "selfSigned" -}}
{{- (include "calmplane.selfSigned" . | fromJson).caCert | b64enc -}}
{{- else if eq .Values.certificates.mode "existingSecret" -}}
{{- required "certificates.existingSecret.caBundle (PEM) is required with certificates.mode=existingSecret" .Values.certificates.existingSecret.caBundle | b64enc -}}
{{- end -}}
{{- end -}}

{{/*
The exclusions by name, then the user's own terms: the base's list
(kube-system, kube-node-lease, calmplane) and the release namespace, as
`calmplane manifests --namespace` writes them.
*/}}
{{- define "calmplane.namespaceExclusions" -}}
- key: kubernetes.io/metadata.name
  operator: NotIn
  values: {{ concat (list "kube-system" "kube-node-lease" "calmplane" .Release.Namespace) .Values.webhook.excludedNamespaces | uniq | toJson }}
{{- with .Values.webhook.namespaceSelector.matchExpressions }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "calmplane.objectSelector" -}}
matchExpressions:
  - key: app.kubernetes.io/name
    operator: NotIn
    values: ["calmplane"]
{{- end -}}

{{/*
The built-in match conditions, as manifests/base/webhook.yaml writes them,
then the user's.
*/}}
{{- define "calmplane.matchConditions.pods" -}}
- name: not-skipped
  expression: >-
    !has(object.metadata.annotations) ||
    !('calmplane.dev/skip' in object.metadata.annotations) ||
    !object.metadata.annotations['calmplane.dev/skip'].split(',').exists(p, p.trim() == 'all')
- name: not-a-mirror-pod
  expression: >-
    !has(object.metadata.annotations) ||
    !('kubernetes.io/config.mirror' in object.metadata.annotations)
{{- with .Values.webhook.matchConditions.pods }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "calmplane.matchConditions.deployments" -}}
- name: not-skipped
  expression: >-
    !has(object.metadata.annotations) ||
    !('calmplane.dev/skip' in object.metadata.annotations) ||
    !object.metadata.annotations['calmplane.dev/skip'].split(',').exists(p, p.trim() == 'all')
- name: spec-or-history-changed
  expression: >-
    request.operation != 'UPDATE' || object.spec != oldObject.spec ||
    object.metadata.?annotations[?'calmplane.dev/rollouts'].orValue('') !=
    oldObject.metadata.?annotations[?'calmplane.dev/rollouts'].orValue('')
{{- with .Values.webhook.matchConditions.deployments }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The policy file as calmplane reads it: `reportMode` puts every section in report. */}}
{{- define "calmplane.policy" -}}
{{- $policy := deepCopy .Values.policy -}}
{{- if .Values.reportMode -}}
{{- range $section, $settings := $policy -}}
{{- $_ := set $settings "enforcement" "report" -}}
{{- end -}}
{{- end -}}
{{- toYaml $policy -}}
{{- end -}}

{{/* Whether the webhook's own workload (Deployment, Service, PDB) is rendered. */}}
{{- define "calmplane.inCluster" -}}
{{- if not (include "calmplane.url" .) -}}true{{- end -}}
{{- end -}}

{{/* The hardened security contexts of every container the chart runs. */}}
{{- define "calmplane.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "calmplane.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* What the dns policy would add to a pod: calmplane's own pods carry it. */}}
{{- define "calmplane.dnsConfig" -}}
options:
  - name: ndots
    value: "2"
  - name: single-request-reopen
{{- end -}}

{{/* clientConfig for `(list $ path)`: the Service, or webhook.url, and the caBundle. */}}
{{- define "calmplane.clientConfig" -}}
{{- $root := index . 0 -}}
{{- $path := index . 1 -}}
{{- $url := include "calmplane.url" $root -}}
{{- if $url }}
url: {{ printf "%s%s" $url $path | quote }}
{{- else }}
service:
  namespace: {{ $root.Release.Namespace }}
  name: {{ include "calmplane.fullname" $root }}
  path: {{ $path }}
  port: 443
{{- end }}
{{- with include "calmplane.caBundle" $root }}
caBundle: {{ . }}
{{- end }}
{{- end -}}

{{/* namespaceSelector for `(list $ "mutate"|"report")`. */}}
{{- define "calmplane.namespaceSelector" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $labels := deepCopy $root.Values.webhook.namespaceSelector.matchLabels -}}
{{- if eq $kind "report" -}}
{{- $_ := set $labels "calmplane.dev/enabled" "report" -}}
{{- end -}}
{{- with $labels }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
matchExpressions:
{{- if eq $kind "mutate" }}
  - key: calmplane.dev/enabled
    operator: In
    values: ["true", "apiserver"]
{{- end }}
  {{- include "calmplane.namespaceExclusions" $root | nindent 2 }}
{{- end -}}

{{/*
The environment of the hook Pods: calmplane's base URL and the CA the
apiserver trusts it with (the caBundle's, read where it is kept).
*/}}
{{- define "calmplane.helperEnv" -}}
- name: CALMPLANE_URL
  value: {{ include "calmplane.baseUrl" . | quote }}
- name: CALMPLANE_CA
{{- if eq .Values.certificates.mode "existingSecret" }}
  value: {{ .Values.certificates.existingSecret.caBundle | quote }}
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ include "calmplane.tlsSecretName" . }}
      key: ca.crt
{{- end }}
{{- end -}}

{{/* The spec every hook Pod shares: hardened, no token, /tmp for the CA file. */}}
{{- define "calmplane.helperPodSpec" -}}
restartPolicy: Never
# The release's own ServiceAccount: it exists before any hook runs.
serviceAccountName: {{ include "calmplane.fullname" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "calmplane.podSecurityContext" . | nindent 2 }}
dnsConfig:
  {{- include "calmplane.dnsConfig" . | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 1Mi
{{- end -}}

{{- define "calmplane.helperContainer" -}}
image: {{ include "calmplane.helperImage" . }}
imagePullPolicy: IfNotPresent
resources:
  requests:
    cpu: 10m
    memory: 16Mi
  limits:
    memory: 32Mi
securityContext:
  {{- include "calmplane.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end -}}
