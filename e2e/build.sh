#!/usr/bin/env bash
# Builds the control plane the e2e suite runs calmplane against into e2e/bin/:
# kube-apiserver, kube-controller-manager and kubectl (e2e/cluster,
# k8s.io/kubernetes; kubectl of the same release, so there is no version skew
# and no dependency on whatever kubectl the machine has) and etcd (e2e/etcd,
# go.etcd.io/etcd/server/v3).
#
# The binaries are rebuilt only when the pins change: bin/.stamp holds a hash
# of both modules' go.mod/go.sum, this script and the Go version. A rebuild
# with a warm Go build cache (GOCACHE) is mostly linking.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${E2E_BIN_DIR:-$here/bin}"

command -v go >/dev/null || { echo "e2e/build.sh: Go is needed to build the control plane (https://go.dev/dl, >= the 'go' line of e2e/cluster/go.mod)" >&2; exit 1; }

stamp="$(cat "$here"/cluster/go.mod "$here"/cluster/go.sum "$here"/etcd/go.mod "$here"/etcd/go.sum "$here"/build.sh <(go version) | sha256sum | cut -d' ' -f1)"
if [ -f "$bin/.stamp" ] && [ "$(cat "$bin/.stamp")" = "$stamp" ] \
	&& [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ -x "$bin/kubectl" ] && [ -x "$bin/etcd" ]; then
	echo "e2e/build.sh: control plane up to date in $bin" >&2
	exit 0
fi

k8s_version="$(cd "$here/cluster" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd_version="$(cd "$here/etcd" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
[[ "$k8s_version" =~ ^v1\.([0-9]+)\. ]] || { echo "e2e/build.sh: no k8s.io/kubernetes release in cluster/go.mod" >&2; exit 1; }
minor="${BASH_REMATCH[1]}"

# Without these the binaries report v0.0.0-master, which kubectl flags as skew
# and which the apiserver would use as its binary/emulation version.
v=k8s.io/component-base/version
ldflags="-s -w -X $v.gitVersion=$k8s_version -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"

mkdir -p "$bin"
rm -f "$bin/.stamp"
export CGO_ENABLED=0
start=$(date +%s)
(cd "$here/cluster" && go build -trimpath -ldflags "$ldflags" -o "$bin/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
echo "$stamp" > "$bin/.stamp"
echo "e2e/build.sh: built kube-apiserver, kube-controller-manager, kubectl $k8s_version and etcd $etcd_version in $(( $(date +%s) - start ))s" >&2
