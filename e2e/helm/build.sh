#!/usr/bin/env bash
# Builds the helm that tests/helm (make test) and e2e/tests/helm.rs (make e2e)
# run against charts/calmplane, into e2e/bin/helm, from the pinned module
# helm.sh/helm/v4 (go.mod here: its `tool` line and the versions helm's own
# go.mod requires, nothing lifted by the control plane's pins in ../cluster).
#
# Rebuilt only when the pins change: bin/.helm.stamp holds a hash of go.mod,
# go.sum, this script and the Go version. From a cold Go cache this is a
# download of about 130 modules and a compile of helm (see e2e/README.md for
# the time it takes); with a warm GOCACHE it is mostly linking.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${E2E_BIN_DIR:-$(cd "$here/.." && pwd)/bin}"

command -v go >/dev/null || { echo "e2e/helm/build.sh: Go is needed to build helm (https://go.dev/dl, >= the 'go' line of e2e/helm/go.mod)" >&2; exit 1; }

stamp="$(cat "$here"/go.mod "$here"/go.sum "$here"/build.sh <(go version) | sha256sum | cut -d' ' -f1)"
if [ -f "$bin/.helm.stamp" ] && [ "$(cat "$bin/.helm.stamp")" = "$stamp" ] && [ -x "$bin/helm" ]; then
	echo "e2e/helm/build.sh: helm up to date in $bin" >&2
	exit 0
fi

version="$(cd "$here" && go list -m -f '{{.Version}}' helm.sh/helm/v4)"
# As helm's Makefile sets them for a tagged release: `helm version` then
# reports the pinned tag rather than "main".
v=helm.sh/helm/v4/internal/version
ldflags="-s -w -X $v.version=$version -X $v.metadata= -X $v.gitTreeState=clean"

mkdir -p "$bin"
rm -f "$bin/.helm.stamp"
export CGO_ENABLED=0
start=$(date +%s)
(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$bin/helm" helm.sh/helm/v4/cmd/helm)
echo "$stamp" > "$bin/.helm.stamp"
echo "e2e/helm/build.sh: built helm $version in $(( $(date +%s) - start ))s" >&2
