#!/usr/bin/env bash
# Builds a current kube-apiserver, kube-controller-manager and etcd from the Go module proxy
# (route A of ../shared/kube-apiserver.md) into a cache outside the clone, keyed by version, and
# prints the folder that holds them. A second run finds them there and costs nothing.
#
#   bash tests/k8s/build.sh        # -> ~/.cache/chat-backend/k8s/v1.37.2-etcd3.7.3/bin
#
# The wrapper modules (apiserver/, etcd/) pin every version in their go.mod/go.sum; nothing
# here floats. Measured cold on 2 cores: see README ("Testing the operator").
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION="v1.37.2"
ETCD_VERSION="v3.7.3"
CACHE="${CHAT_CACHE_DIR:-$HOME/.cache/chat-backend}"
BIN="$CACHE/k8s/$K8S_VERSION-etcd${ETCD_VERSION#v}/bin"
log() { printf '\033[1m[k8s/build.sh]\033[0m %s\n' "$*" >&2; }

if ! command -v go >/dev/null; then
  log "go is not installed: it is needed once to build kube-apiserver and etcd (Go >= 1.26)"
  exit 1
fi
mkdir -p "$BIN"
# readonly: the committed go.sum must be complete; a build never rewrites it.
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
# Without these the binaries call themselves v0.0.0-master, and kubectl warns about skew.
VERSION_FLAGS="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
VERSION_FLAGS+=" -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
VERSION_FLAGS+=" -X k8s.io/component-base/version.gitTreeState=clean"
build() { # module-dir package output
  if [ -x "$BIN/$3" ]; then return; fi
  log "building $3 from $2 (once; cached in $BIN)"
  local start=$SECONDS
  # Module downloads print a line each (hundreds): keep errors only.
  (cd "$HERE/$1" && go build -ldflags="-s -w $VERSION_FLAGS" -o "$BIN/$3.tmp" "$2") \
    2> >(grep -v '^go: downloading' >&2)
  mv "$BIN/$3.tmp" "$BIN/$3"
  log "built $3 in $((SECONDS - start)) s"
}
build etcd go.etcd.io/etcd/server/v3 etcd
build apiserver k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
if [ "${WITH_CONTROLLER_MANAGER:-0}" = 1 ]; then
  build apiserver k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager
fi
if [ "${WITH_KUBECTL:-0}" = 1 ]; then
  build apiserver k8s.io/kubernetes/cmd/kubectl kubectl
fi
echo "$BIN"
