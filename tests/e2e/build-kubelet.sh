#!/usr/bin/env bash
# Build kubelet from the Go module proxy (no git clone, no container engine) and cache the binary by version.
# usage: build-kubelet.sh v1.37.2 OUTPUT
#
# k8s.io/kubernetes' go.mod replaces every k8s.io/* staging module with ./staging/src/k8s.io/<name>, and the
# module zip does not contain staging/ (each staging dir is its own published module). So the replaces are
# pointed at the published modules of the same release (v1.X.Y -> v0.X.Y) before `go build ./cmd/kubelet`.
# A replace whose module was never published (sample-* modules) is dropped with its requirement; kubelet does
# not import them.
set -euo pipefail
version=$1 out=$(realpath -m "$2")
staging_version=v0.${version#v1.}
export CGO_ENABLED=0 GOFLAGS=-trimpath GOWORK=off

if [[ -x $out ]] && "$out" --version 2>/dev/null | grep -qx "Kubernetes ${version}"; then
    echo "kubelet ${version}: cached at ${out}"
    exit 0
fi

start=$(date +%s)
go mod download "k8s.io/kubernetes@${version}"
src=$(go env GOMODCACHE)/k8s.io/kubernetes@${version}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The module cache is read-only; build from a writable copy (without the e2e test tree, which kubelet does not need).
mkdir "$work/kubernetes"
tar -C "$src" --exclude=./test --exclude=./vendor --exclude=./go.work --exclude=./go.work.sum -cf - . |
    tar -C "$work/kubernetes" -xf -
chmod -R u+w "$work/kubernetes"
cd "$work/kubernetes"

edits=()
for module in $(sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*|\1|p' go.mod); do
    if go mod download "${module}@${staging_version}" 2>/dev/null; then
        edits+=("-replace=${module}=${module}@${staging_version}")
    else
        echo "kubelet build: ${module}@${staging_version} is not published; dropping it (kubelet does not use it)"
        edits+=("-dropreplace=${module}" "-droprequire=${module}")
    fi
done
go mod edit "${edits[@]}"

# The same version stamp the release build puts in (kubelet --version, /healthz and node status report it).
minor=${version#v1.}
minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
mkdir -p "$(dirname "$out")"
go build -mod=mod -ldflags "$ldflags" -o "$out.tmp" ./cmd/kubelet
mv "$out.tmp" "$out"
echo "kubelet ${version}: built in $(( $(date +%s) - start ))s -> ${out}"
