#!/usr/bin/env bash
# Regenerates the staging `replace` block of e2e/cluster/go.mod.
#
# k8s.io/kubernetes cannot be required as published: its go.mod requires every
# k8s.io/* staging module at v0.0.0 and replaces it with ./staging/src/...,
# which does not exist outside its own tree. Each staging module is published
# on its own as v0.<minor>.<patch> of the same release, so the list is derived
# from the pinned release's go.mod rather than written by hand (a new release
# may add or drop staging modules).
#
# Usage: e2e/cluster/gen-replaces.sh [vX.Y.Z]   (default: the version go.mod pins)
set -euo pipefail
cd "$(dirname "$0")"

version="${1:-$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2 } $1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' go.mod | head -n 1)}"
[[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "not a k8s.io/kubernetes release: '$version'" >&2; exit 1; }
staging="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

gomod="$(go mod download -json "k8s.io/kubernetes@${version}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
[ -f "$gomod" ] || { echo "go mod download k8s.io/kubernetes@${version} gave no go.mod" >&2; exit 1; }
modules="$(awk '$2 == "=>" && $3 ~ /^\.\/staging\/src\// { print $1 }' "$gomod" | sort -u)"
[ -n "$modules" ] || { echo "no staging replaces found in $gomod" >&2; exit 1; }

# Drop the previous generated block, then append the new one, so re-running is idempotent.
awk '/^\/\/ BEGIN generated staging replaces/ { skip = 1 } !skip { print } /^\/\/ END generated staging replaces/ { skip = 0 }' go.mod > go.mod.tmp
{
	echo "// BEGIN generated staging replaces (gen-replaces.sh, k8s.io/kubernetes ${version}): do not edit"
	echo "replace ("
	for m in $modules; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
	echo ")"
	echo "// END generated staging replaces"
} >> go.mod.tmp
mv go.mod.tmp go.mod
go mod edit -fmt
echo "$(wc -w <<<"$modules") staging modules replaced at ${staging}" >&2
