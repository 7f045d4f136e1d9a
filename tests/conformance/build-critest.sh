#!/usr/bin/env bash
# Build critest (a `go test -c` binary: cmd/critest holds only a test file) from the Go module proxy.
# usage: build-critest.sh v1.37.0 OUTPUT
set -euo pipefail
version=$1 out=$(realpath -m "$2")
export CGO_ENABLED=0 GOFLAGS=-trimpath
go mod download "sigs.k8s.io/cri-tools@${version}"
src=$(go env GOMODCACHE)/sigs.k8s.io/cri-tools@${version}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The module cache is read-only; build from a writable copy.
cp -r "$src" "$work/cri-tools"
chmod -R u+w "$work/cri-tools"
mkdir -p "$(dirname "$out")"
cd "$work/cri-tools"
go test -c -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=${version#v}" -o "$out" ./cmd/critest
