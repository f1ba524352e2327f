#!/usr/bin/env bash
# Builds a current kube-apiserver, etcd, the Helm CLI, tiltcheck and promcheck (and, when asked,
# kube-controller-manager and kubectl) from the Go module proxy (route A of
# ../shared/kube-apiserver.md) into a cache outside the clone, one file per tool and version, and
# prints a folder holding them under their plain names. A second run finds them there and costs
# nothing; a version bump rebuilds only that tool.
#
#   bash tests/k8s/build.sh        # -> ~/.cache/chat-backend/k8s/bin
#
# The modules (apiserver/, etcd/, helm/, tiltcheck/, promcheck/) pin every version in their
# go.mod/go.sum; nothing here floats. Measured cold on 2 cores: see README ("Testing the operator").
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION="v1.37.2"
ETCD_VERSION="v3.7.3"
HELM_VERSION="v4.3.2"
CACHE="${CHAT_CACHE_DIR:-$HOME/.cache/chat-backend}"
STORE="$CACHE/k8s/store"
BIN="$CACHE/k8s/bin"
log() { printf '\033[1m[k8s/build.sh]\033[0m %s\n' "$*" >&2; }

if ! command -v go >/dev/null; then
  log "go is not installed: it is needed once to build kube-apiserver, etcd and helm (Go >= 1.26)"
  exit 1
fi
mkdir -p "$STORE" "$BIN"
# readonly: the committed go.sum must be complete; a build never rewrites it.
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
# Without these the binaries call themselves v0.0.0-master, and kubectl warns about skew.
K8S_FLAGS="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
K8S_FLAGS+=" -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
K8S_FLAGS+=" -X k8s.io/component-base/version.gitTreeState=clean"
HELM_FLAGS="-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
build() { # module-dir package name version ldflags
  local target="$STORE/$3-$4"
  if [ ! -x "$target" ]; then
    log "building $3 $4 from $2 (once; cached in $STORE)"
    local start=$SECONDS
    # Module downloads print a line each (hundreds): keep errors only.
    (cd "$HERE/$1" && go build -ldflags="-s -w $5" -o "$target.tmp" "$2") \
      2> >(grep -v '^go: downloading' >&2)
    mv "$target.tmp" "$target"
    log "built $3 in $((SECONDS - start)) s"
  fi
  ln -sf "$target" "$BIN/$3"
}
build etcd go.etcd.io/etcd/server/v3 etcd "$ETCD_VERSION" ""
build apiserver k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$K8S_VERSION" "$K8S_FLAGS"
build helm helm.sh/helm/v4/cmd/helm helm "$HELM_VERSION" "$HELM_FLAGS"
# The Tiltfile and kind config checker (tiltcheck/, this repository's own code; small: about
# 30 s cold, 4 MB), cached under a hash of its sources so that an edit rebuilds it.
TILTCHECK_HASH="$(cat "$HERE"/tiltcheck/go.mod "$HERE"/tiltcheck/go.sum "$HERE"/tiltcheck/*.go | sha256sum | cut -c1-16)"
build tiltcheck . tiltcheck "$TILTCHECK_HASH" ""
# The PromQL checker (promcheck/, this repository's own code over Prometheus' parser; about 85 s
# cold, 7 MB) for the dashboard and alert rules test, cached under a hash of its sources too.
PROMCHECK_HASH="$(cat "$HERE"/promcheck/go.mod "$HERE"/promcheck/go.sum "$HERE"/promcheck/*.go | sha256sum | cut -c1-16)"
build promcheck . promcheck "$PROMCHECK_HASH" ""
if [ "${WITH_CONTROLLER_MANAGER:-0}" = 1 ]; then
  build apiserver k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$K8S_VERSION" "$K8S_FLAGS"
fi
if [ "${WITH_KUBECTL:-0}" = 1 ]; then
  build apiserver k8s.io/kubernetes/cmd/kubectl kubectl "$K8S_VERSION" "$K8S_FLAGS"
fi
echo "$BIN"
